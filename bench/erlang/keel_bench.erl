%% keel_bench: the BEAM side of keel's benchmark comparison.
%%
%% Runs the same workloads as keel's C benchmarks on Erlang/OTP and prints
%% one JSON object per line on stdout:
%%
%%   {"bench": "NAME", "unit": "UNIT", "value": NUMBER}
%%
%% Progress and the individual samples go to stderr, so stdout stays valid
%% JSON lines.  Each workload is repeated a few times and the median sample is
%% reported.
%%
%% Usage (bench/erlang/run.sh does this for you):
%%
%%   erlc -o DIR keel_bench.erl
%%   erl -noshell -pa DIR -s keel_bench main -s init stop            % all
%%   erl -noshell -pa DIR -s keel_bench main spawn ring -s init stop % some
%%   erl -noshell -pa DIR -eval 'keel_bench:main(["ring"]), init:stop().'
%%
%% main/0,1 halt the VM with status 1 on an unknown workload name or a failed
%% workload; run/1 returns {ok, Results} | {error, Reason} instead (for use
%% from a shell).
%%
%% This one module is also the gen_server (worker) and supervisor callback
%% module used by call_rtt, restart_latency and supervisor_start.  The
%% -behaviour attributes are left out on purpose: gen_server and supervisor
%% both require init/1 and the compiler would warn about the conflict;
%% init/1 tells the two apart by its argument.
-module(keel_bench).

-export([main/0, main/1, run/1, workloads/0]).
%% gen_server callbacks
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
%% gen_statem callbacks (statem_call_rtt: a pushbutton)
-export([callback_mode/0, off/3, on/3]).
%% worker start function used by the supervisors
-export([start_worker/0, start_named_worker/1]).
%% entry point of the fresh VM that takes one idle_process_memory sample
-export([idle_memory_child/0]).

-define(SPAWN_N, 100000).
-define(IDLE_N, 100000).
-define(CAST_N, 2000000).
-define(RING_SIZE, 1000).
-define(RING_HOPS, 2000000).
-define(PAIRS_PER_SCHED, 4).
-define(PAIR_ROUNDTRIPS, 200000).
-define(CALL_N, 500000).
-define(RESTART_N, 1000).
-define(RESTART_BATCH, 50).
-define(SUP_CHILDREN, 1000).
-define(WORKER_NAME, keel_bench_worker).

%% {Name, Unit, Repetitions, Fun}; Fun() returns a list of samples (usually
%% one; restart_latency returns one per restart).
workloads() ->
    [{spawn, "ns/process", 7, fun bench_spawn/0},
     {idle_process_memory, "bytes/process", 3, fun bench_idle_memory/0},
     {cast_throughput, "msgs/s", 9, fun bench_cast/0},
     {pipeline, "msgs/s", 9, fun bench_pipeline/0},
     {ring, "ns/hop", 9, fun bench_ring/0},
     {pairs_roundtrips, "roundtrips/s", 7, fun bench_pairs/0},
     {call_rtt, "ns", 9, fun bench_call_rtt/0},
     {statem_call_rtt, "ns", 9, fun bench_statem_call_rtt/0},
     {restart_latency, "ns", 1, fun bench_restart/0},
     {supervisor_start, "ns/child", 7, fun bench_supervisor_start/0}].

%%% ---------------------------------------------------------------------
%%% Entry points
%%% ---------------------------------------------------------------------

main() ->
    main([]).

main(Args) ->
    case run(Args) of
        {ok, _} ->
            ok;
        {error, Reason} ->
            io:format(standard_error, "keel_bench: ~ts~n", [Reason]),
            erlang:halt(1)
    end.

run(Args) ->
    All = workloads(),
    Known = [atom_to_list(N) || {N, _, _, _} <- All],
    Names = [to_string(A) || A <- Args],
    case [N || N <- Names, not lists:member(N, Known)] of
        [] ->
            Selected = case Names of
                           [] -> All;
                           _ -> [W || {N, _, _, _} = W <- All,
                                      lists:member(atom_to_list(N), Names)]
                       end,
            run_workloads(Selected, []);
        Unknown ->
            {error, io_lib:format("unknown workload(s): ~ts (known: ~ts)",
                                 [lists:join(" ", Unknown),
                                  lists:join(" ", Known)])}
    end.

to_string(A) when is_atom(A) -> atom_to_list(A);
to_string(B) when is_binary(B) -> binary_to_list(B);
to_string(L) when is_list(L) -> L.

run_workloads([], Acc) ->
    {ok, lists:reverse(Acc)};
run_workloads([{Name, Unit, Reps, Fun} | Rest], Acc) ->
    try
        Samples = lists:append([isolated(Fun) || _ <- lists:seq(1, Reps)]),
        Value = median(Samples),
        io:format(standard_error, "keel_bench: ~s (~s) samples: ~ts~n",
                  [Name, Unit, format_samples(Samples)]),
        io:format("{\"bench\": \"~s\", \"unit\": \"~s\", \"value\": ~s}~n",
                  [Name, Unit, format_number(Value)]),
        run_workloads(Rest, [{Name, Unit, Value} | Acc])
    catch
        Class:Reason:Stack ->
            {error, io_lib:format("workload ~s failed: ~p:~p~n~p",
                                  [Name, Class, Reason, Stack])}
    end.

%% Run one repetition in a fresh process so each starts with an empty
%% mailbox and a small heap, and leftovers die with it.
isolated(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({keel_bench_result, Fun()}) end),
    receive
        {'DOWN', Ref, process, Pid, {keel_bench_result, Samples}} ->
            Samples;
        {'DOWN', Ref, process, Pid, Other} ->
            error({repetition_crashed, Other})
    end.

%%% ---------------------------------------------------------------------
%%% spawn: ns per spawned process (spawning only)
%%% ---------------------------------------------------------------------

bench_spawn() ->
    Base = erlang:system_info(process_count),
    T0 = now_ns(),
    Head = spawn_chain(?SPAWN_N, self()),
    T1 = now_ns(),
    release_chain(Head, Base),
    [(T1 - T0) / ?SPAWN_N].

%% Spawn N processes waiting in receive.  Each one's closure holds the
%% previously spawned one (the first holds the caller), so the caller keeps
%% only the head: no pid list in the caller's heap to skew memory figures.
spawn_chain(0, Next) ->
    Next;
spawn_chain(N, Next) ->
    Pid = spawn(fun() -> idle(Next) end),
    spawn_chain(N - 1, Pid).

idle(Next) ->
    receive
        stop -> Next ! stop
    end.

%% Stop the whole chain (stop is passed along to the caller) and wait until
%% every process has really exited.
release_chain(Head, BaseProcessCount) ->
    Head ! stop,
    receive stop -> ok end,
    wait_process_count(BaseProcessCount).

wait_process_count(Base) ->
    case erlang:system_info(process_count) =< Base of
        true -> ok;
        false -> timer:sleep(1), wait_process_count(Base)
    end.

%%% ---------------------------------------------------------------------
%%% idle_process_memory: resident bytes per idle process
%%% ---------------------------------------------------------------------

%% Each sample is taken in a fresh Erlang VM started for it: once 100,000
%% processes have been allocated and freed, BEAM's allocators keep (some of)
%% that memory, and a second measurement in the same VM shows only ~40% of
%% the real cost.  The fresh VM inherits $ERL_FLAGS from the environment.
bench_idle_memory() ->
    Dir = filename:dirname(code:which(?MODULE)),
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Cmd = lists:flatten(
            io_lib:format("'~ts' -noshell -pa '~ts' -eval "
                          "'keel_bench:idle_memory_child().'",
                          [Erl, Dir])),
    Out = string:trim(os:cmd(Cmd)),
    case string:to_float(Out) of
        {Value, ""} -> [Value];
        _ -> error({idle_memory_child_failed, Cmd, Out})
    end.

%% Entry point of the fresh VM: print one sample and halt.
idle_memory_child() ->
    Value = try
                isolated(fun idle_memory_sample/0)
            catch
                Class:Reason ->
                    io:format(standard_error, "keel_bench: ~p:~p~n",
                              [Class, Reason]),
                    erlang:halt(1)
            end,
    io:format("~s~n", [float_to_list(hd(Value), [{decimals, 3}])]),
    erlang:halt(0).

idle_memory_sample() ->
    Base = erlang:system_info(process_count),
    erlang:garbage_collect(),
    settle(),
    Before = rss_bytes(),
    Head = spawn_chain(?IDLE_N, self()),
    erlang:garbage_collect(),
    settle(),
    After = rss_bytes(),
    release_chain(Head, Base),
    [(After - Before) / ?IDLE_N].

%% Wait until every run queue is empty (all spawned processes have run to
%% their receive) and a little more.
settle() ->
    case erlang:statistics(total_run_queue_lengths_all) of
        0 -> timer:sleep(100);
        _ -> timer:sleep(5), settle()
    end.

rss_bytes() ->
    PageSize = page_size(),
    {ok, Statm} = file:read_file("/proc/self/statm"),
    [_Size, Resident | _] = binary:split(Statm, [<<" ">>, <<"\n">>],
                                         [global, trim_all]),
    binary_to_integer(Resident) * PageSize.

page_size() ->
    case get(keel_bench_page_size) of
        undefined ->
            PS = list_to_integer(string:trim(os:cmd("getconf PAGESIZE"))),
            put(keel_bench_page_size, PS),
            PS;
        PS ->
            PS
    end.

%%% ---------------------------------------------------------------------
%%% cast_throughput: one sender, one receiver, msgs/s
%%% ---------------------------------------------------------------------

%% The messages are small integers: immediates, so nothing is copied onto
%% the receiver's heap; this is BEAM's best case.  Sending a small tuple
%% ({cast, N}) instead measured ~45% slower (about 6-7 M msgs/s against
%% 10-13 M msgs/s on a 2-core machine).

bench_cast() ->
    Parent = self(),
    Receiver = spawn_link(fun() ->
                                  receive go -> ok end,
                                  count_msgs(?CAST_N),
                                  Parent ! {received, now_ns()}
                          end),
    Sender = spawn_link(fun() ->
                                receive go -> ok end,
                                T0 = now_ns(),
                                send_msgs(Receiver, ?CAST_N),
                                Parent ! {sent, T0}
                        end),
    Receiver ! go,
    erlang:yield(),
    Sender ! go,
    T0 = receive {sent, S} -> S end,
    T1 = receive {received, R} -> R end,
    [?CAST_N / ((T1 - T0) / 1.0e9)].

send_msgs(_To, 0) ->
    ok;
send_msgs(To, N) ->
    To ! N,
    send_msgs(To, N - 1).

count_msgs(0) ->
    ok;
count_msgs(N) ->
    receive
        M when is_integer(M) -> count_msgs(N - 1)
    end.

%%% ---------------------------------------------------------------------
%%% pipeline: source -> relay -> sink, msgs/s (the relay forwards each)
%%% ---------------------------------------------------------------------

bench_pipeline() ->
    Parent = self(),
    Sink = spawn_link(fun() ->
                              receive go -> ok end,
                              count_msgs(?CAST_N),
                              Parent ! {received, now_ns()}
                      end),
    Relay = spawn_link(fun() -> relay_msgs(Sink, ?CAST_N) end),
    Source = spawn_link(fun() ->
                                receive go -> ok end,
                                T0 = now_ns(),
                                send_msgs(Relay, ?CAST_N),
                                Parent ! {sent, T0}
                        end),
    Sink ! go,
    erlang:yield(),
    Source ! go,
    T0 = receive {sent, S} -> S end,
    T1 = receive {received, R} -> R end,
    [?CAST_N / ((T1 - T0) / 1.0e9)].

relay_msgs(_To, 0) ->
    ok;
relay_msgs(To, N) ->
    receive
        M when is_integer(M) -> To ! M, relay_msgs(To, N - 1)
    end.

%%% ---------------------------------------------------------------------
%%% ring: ns per hop, one token around a ring of processes
%%% ---------------------------------------------------------------------

bench_ring() ->
    Parent = self(),
    Pids = [spawn_link(fun() -> receive {next, Next} -> ring_node(Next, Parent) end end)
            || _ <- lists:seq(1, ?RING_SIZE)],
    [First | _] = Pids,
    Nexts = tl(Pids) ++ [First],
    lists:foreach(fun({P, N}) -> P ! {next, N} end, lists:zip(Pids, Nexts)),
    T0 = now_ns(),
    %% The token is a countdown: each process that receives K > 0 passes K - 1
    %% on (one hop); the one that receives 0 reports.  So ?RING_HOPS hops.
    First ! ?RING_HOPS,
    receive ring_done -> ok end,
    T1 = now_ns(),
    lists:foreach(fun(P) -> P ! stop end, Pids),
    [(T1 - T0) / ?RING_HOPS].

ring_node(Next, Parent) ->
    receive
        0 ->
            Parent ! ring_done,
            ring_node(Next, Parent);
        K when is_integer(K) ->
            Next ! K - 1,
            ring_node(Next, Parent);
        stop ->
            ok
    end.

%%% ---------------------------------------------------------------------
%%% pairs_roundtrips: 4 ping-pong pairs per scheduler, all at once
%%% ---------------------------------------------------------------------

bench_pairs() ->
    Parent = self(),
    NPairs = ?PAIRS_PER_SCHED * erlang:system_info(schedulers_online),
    Pingers = [begin
                   Ponger = spawn_link(fun ponger/0),
                   spawn_link(fun() -> pinger(Ponger, Parent) end)
               end || _ <- lists:seq(1, NPairs)],
    T0 = now_ns(),
    lists:foreach(fun(P) -> P ! go end, Pingers),
    [receive pair_done -> ok end || _ <- Pingers],
    T1 = now_ns(),
    [NPairs * ?PAIR_ROUNDTRIPS / ((T1 - T0) / 1.0e9)].

pinger(Ponger, Parent) ->
    Ponger ! {peer, self()},
    receive go -> ok end,
    ping(Ponger, ?PAIR_ROUNDTRIPS),
    Ponger ! stop,
    Parent ! pair_done.

ping(_Ponger, 0) ->
    ok;
ping(Ponger, N) ->
    Ponger ! ping,
    receive pong -> ping(Ponger, N - 1) end.

ponger() ->
    receive {peer, Peer} -> pong_loop(Peer) end.

pong_loop(Peer) ->
    receive
        ping -> Peer ! pong, pong_loop(Peer);
        stop -> ok
    end.

%%% ---------------------------------------------------------------------
%%% call_rtt: sequential gen_server:call, ns per call
%%% ---------------------------------------------------------------------

bench_call_rtt() ->
    {ok, Server} = gen_server:start_link(?MODULE, worker, []),
    T0 = now_ns(),
    calls(Server, ?CALL_N),
    T1 = now_ns(),
    gen_server:stop(Server),
    [(T1 - T0) / ?CALL_N].

calls(_Server, 0) ->
    ok;
calls(Server, N) ->
    pong = gen_server:call(Server, ping),
    calls(Server, N - 1).

%%% ---------------------------------------------------------------------
%%% statem_call_rtt: sequential gen_statem:call to a pushbutton whose
%%% every push changes state (off <-> on) and replies, ns per call
%%% ---------------------------------------------------------------------

bench_statem_call_rtt() ->
    {ok, Machine} = gen_statem:start_link(?MODULE, statem, []),
    T0 = now_ns(),
    pushes(Machine, ?CALL_N),
    T1 = now_ns(),
    gen_statem:stop(Machine),
    [(T1 - T0) / ?CALL_N].

pushes(_Machine, 0) ->
    ok;
pushes(Machine, N) ->
    _ = gen_statem:call(Machine, push),
    pushes(Machine, N - 1).

%%% ---------------------------------------------------------------------
%%% restart_latency: crash -> replacement answers a call, median ns
%%% ---------------------------------------------------------------------

%% The restarts are done in batches of ?RESTART_BATCH, each under a fresh
%% supervisor.  OTP's supervisor keeps a list of the restarts of the last
%% `period' seconds (at least 1 s) and walks all of it on every restart
%% (lists:takewhile + length in supervisor:add_restart/3); with 1,000
%% restarts inside one second that list reaches 1,000 entries and the median
%% grows from ~12 us to ~25-40 us, which measures the restart-intensity
%% bookkeeping under an unrealistic crash rate, not the restart itself.
bench_restart() ->
    %% Crash and supervisor reports are error-level log events; with the
    %% default handler they would be printed on stdout and cost time.  Keel
    %% logs nothing on this path, so logging is switched off meanwhile.
    with_logging_off(
      fun() ->
              lists:append([restart_batch(?RESTART_BATCH)
                            || _ <- lists:seq(1, ?RESTART_N div ?RESTART_BATCH)])
      end).

restart_batch(N) ->
    {ok, Sup} = supervisor:start_link(?MODULE, {sup, restart}),
    Samples = [restart_once() || _ <- lists:seq(1, N)],
    unlink(Sup),
    gen_server:stop(Sup),
    Samples.

restart_once() ->
    Old = whereis(?WORKER_NAME),
    true = is_pid(Old),
    T0 = now_ns(),
    gen_server:cast(Old, crash),
    wait_replacement(Old),
    T1 = now_ns(),
    T1 - T0.

%% Poll the name until it is held by a new process, then call it until it
%% answers.
wait_replacement(Old) ->
    case whereis(?WORKER_NAME) of
        New when is_pid(New), New =/= Old ->
            case catch gen_server:call(New, ping) of
                pong -> ok;
                _ -> erlang:yield(), wait_replacement(Old)
            end;
        _ ->
            erlang:yield(),
            wait_replacement(Old)
    end.

with_logging_off(Fun) ->
    #{level := Level} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, none),
    try Fun()
    after logger:set_primary_config(level, Level)
    end.

%%% ---------------------------------------------------------------------
%%% supervisor_start: supervisor with 1,000 workers, ns per child
%%% ---------------------------------------------------------------------

bench_supervisor_start() ->
    T0 = now_ns(),
    {ok, Sup} = supervisor:start_link(?MODULE, {sup, {many, ?SUP_CHILDREN}}),
    T1 = now_ns(),
    ?SUP_CHILDREN = proplists:get_value(workers, supervisor:count_children(Sup)),
    unlink(Sup),
    gen_server:stop(Sup),
    [(T1 - T0) / ?SUP_CHILDREN].

%%% ---------------------------------------------------------------------
%%% Callbacks: supervisor (init({sup, _})), gen_server worker, and the
%%% gen_statem pushbutton (init(statem), callback_mode/0, off/3, on/3)
%%% ---------------------------------------------------------------------

start_worker() ->
    gen_server:start_link(?MODULE, worker, []).

start_named_worker(Name) ->
    gen_server:start_link({local, Name}, ?MODULE, worker, []).

init({sup, restart}) ->
    %% High intensity so the supervisor never gives up during the run.
    Flags = #{strategy => one_for_one, intensity => 1000000, period => 1},
    Child = #{id => worker,
              start => {?MODULE, start_named_worker, [?WORKER_NAME]},
              restart => permanent, shutdown => 5000, type => worker},
    {ok, {Flags, [Child]}};
init({sup, {many, N}}) ->
    Flags = #{strategy => one_for_one, intensity => 1, period => 5},
    Children = [#{id => I,
                  start => {?MODULE, start_worker, []},
                  restart => permanent, shutdown => 5000, type => worker}
                || I <- lists:seq(1, N)],
    {ok, {Flags, Children}};
init(worker) ->
    {ok, no_state};
init(statem) ->
    {ok, off, 0}.

callback_mode() ->
    state_functions.

off({call, From}, push, N) ->
    {next_state, on, N + 1, [{reply, From, on}]}.

on({call, From}, push, N) ->
    {next_state, off, N, [{reply, From, off}]}.

handle_call(ping, _From, State) ->
    {reply, pong, State}.

handle_cast(crash, State) ->
    {stop, crashed, State}.

handle_info(_Msg, State) ->
    {noreply, State}.

terminate(_Reason, _State) ->
    ok.

%%% ---------------------------------------------------------------------
%%% Helpers
%%% ---------------------------------------------------------------------

now_ns() ->
    erlang:monotonic_time(nanosecond).

median(Samples) ->
    Sorted = lists:sort(Samples),
    Len = length(Sorted),
    case Len rem 2 of
        1 -> lists:nth(Len div 2 + 1, Sorted);
        0 -> (lists:nth(Len div 2, Sorted) + lists:nth(Len div 2 + 1, Sorted)) / 2
    end.

format_number(V) when is_integer(V) ->
    integer_to_list(V);
format_number(V) when is_float(V) ->
    float_to_list(V, [{decimals, 1}]).

format_samples(Samples) when length(Samples) > 10 ->
    Sorted = lists:sort(Samples),
    Len = length(Sorted),
    Pick = fun(P) -> lists:nth(max(1, min(Len, round(P * Len))), Sorted) end,
    io_lib:format("~b samples, min ~s p50 ~s p90 ~s p99 ~s max ~s",
                  [Len, format_number(hd(Sorted)), format_number(median(Sorted)),
                   format_number(Pick(0.9)), format_number(Pick(0.99)),
                   format_number(lists:last(Sorted))]);
format_samples(Samples) ->
    lists:join(" ", [format_number(S) || S <- Samples]).
