-- mix.lua - wrk's script for bench/orders/run.sh: the orders service
-- (examples/orders) under a mix of commands and queries.
--
-- Each connection's next request is, in turn (a cycle of five):
--   1. POST /orders                create an order (1-3 items, one of 100 customers)
--   2. POST /orders/:id/pay        an order this thread created and saw placed
--   3. POST /orders/:id/ship       an order this thread saw paid
--   4. GET  /orders/:id            an order this thread saw shipped (from the aggregate)
--   5. GET  /orders?status=paid    the list query (the orders_view read model);
--                                  every other time ?customer=cN instead
-- so three requests in five are commands. When no id is waiting for a step,
-- the slot creates an order instead (a command too).
--
-- wrk does not say which request a response answers (a thread's connections
-- interleave), so the ids travel through the responses: a 201 (create) puts
-- its id in the thread's "to pay" queue, a command's 200 with status "paid"
-- in "to ship", one with "shipped" among the ids to GET. An id is taken off
-- its queue when its request is sent, so no order is paid or shipped twice
-- and nothing here expects a 409: any status >= 300 is counted as an error.
-- A GET /orders/:id answer carries an ETag and a list starts with
-- {"orders": that is how a query's 200 is told from a command's.
--
-- done() prints two lines that run.sh parses:
--   ORDERS commands=N queries=N errors=N seconds=S
--   ORDERS latency_us p50=N p90=N p99=N        (every request of the mix)

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- per thread (each wrk thread has its own Lua state): counters read by done()
commands, queries, errors = 0, 0, 0

local slot = 0
local to_pay, to_ship, shipped = {}, {}, {}
local shipped_next, shipped_max = 1, 1000 -- a ring of ids to GET
local json = { ["Content-Type"] = "application/json" }

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
end

local function pop(q)
  local n = #q
  if n == 0 then return nil end
  local v = q[n]
  q[n] = nil
  return v
end

local function create()
  local items = {}
  for i = 1, math.random(1, 3) do
    items[i] = string.format('{"sku":"S%d","qty":%d,"price_cents":%d}', math.random(1, 500),
      math.random(1, 5), math.random(100, 5000))
  end
  local body = string.format('{"customer":"c%d","items":[%s]}', math.random(1, 100),
    table.concat(items, ","))
  return wrk.format("POST", "/orders", json, body)
end

function request()
  slot = slot % 5 + 1
  local id
  if slot == 2 then
    id = pop(to_pay)
    if id then return wrk.format("POST", "/orders/" .. id .. "/pay") end
  elseif slot == 3 then
    id = pop(to_ship)
    if id then return wrk.format("POST", "/orders/" .. id .. "/ship") end
  elseif slot == 4 then
    if #shipped > 0 then
      return wrk.format("GET", "/orders/" .. shipped[math.random(1, #shipped)])
    end
  elseif slot == 5 then
    if math.random(2) == 1 then return wrk.format("GET", "/orders?status=paid") end
    return wrk.format("GET", "/orders?customer=c" .. math.random(1, 100))
  end
  return create()
end

local function has_etag(headers)
  for k, _ in pairs(headers) do
    if k:lower() == "etag" then return true end
  end
  return false
end

function response(status, headers, body)
  if status >= 300 then
    errors = errors + 1
    return
  end
  if status == 201 then
    commands = commands + 1
    local id = body:match('"id":%s*"([^"]+)"')
    if id then table.insert(to_pay, id) end
    return
  end
  if body:sub(1, 10) == '{"orders":' or has_etag(headers) then
    queries = queries + 1
    return
  end
  commands = commands + 1
  local st = body:match('"status":%s*"(%a+)"')
  local id = body:match('"id":%s*"([^"]+)"')
  if not id then return end
  if st == "paid" then
    table.insert(to_ship, id)
  elseif st == "shipped" then
    shipped[shipped_next] = id
    shipped_next = shipped_next % shipped_max + 1
  end
end

function done(summary, latency, requests)
  local c, q, e = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("commands")
    q = q + t:get("queries")
    e = e + t:get("errors")
  end
  io.write(string.format("ORDERS commands=%d queries=%d errors=%d seconds=%.3f\n", c, q, e,
    summary.duration / 1e6))
  io.write(string.format("ORDERS latency_us p50=%d p90=%d p99=%d\n", latency:percentile(50),
    latency:percentile(90), latency:percentile(99)))
end
