%% ets_bench: the ETS side of bench/bench_table.c (keel's shared tables).
%%
%% The same workloads, the same key sequence, the same figure (all workers'
%% operations per second of wall time), one JSON object per line on stdout:
%%
%%   {"bench": "table_lookup_1s", "unit": "ops/s", "value": N}
%%
%% A public set with read_concurrency and write_concurrency, 65,536 keys
%% prefilled with {K, K}; worker W does 2,000,000 operations on keys
%% (I * 2654435761) band 65535 for I in [W * OPS, (W + 1) * OPS). The _2s
%% workloads run two workers at once (the VM has one scheduler per core, two
%% here, and spreads them). Each workload runs 3 times (as bench_table --runs 3 in bench-compare), each time in a fresh
%% process owning a fresh table; the median is printed.
%%
%% Usage (bench/erlang/run_ets.sh does this): erl -noshell -pa DIR -eval
%% 'ets_bench:main(["table_lookup_1s"]), init:stop().'
-module(ets_bench).

-export([main/1]).

-define(KEYS, 65536).
-define(OPS, 2000000).
-define(MUL, 2654435761).
-define(RUNS, 3).

workloads() ->
    [{"table_lookup_1s", lookup, 1},
     {"table_lookup_2s", lookup, 2},
     {"table_insert_1s", insert, 1},
     {"table_insert_2s", insert, 2},
     {"table_update_counter_1s", counter, 1},
     {"table_update_counter_2s", counter, 2}].

main(Args) ->
    Names = [to_string(A) || A <- Args],
    Selected = [W || {N, _, _} = W <- workloads(), Names =:= [] orelse lists:member(N, Names)],
    lists:foreach(fun run_workload/1, Selected).

to_string(A) when is_atom(A) -> atom_to_list(A);
to_string(L) when is_list(L) -> L.

run_workload({Name, Op, Workers}) ->
    Samples = [isolated(fun() -> run(Op, Workers) end) || _ <- lists:seq(1, ?RUNS)],
    io:format(standard_error, "ets_bench: ~s samples: ~p~n", [Name, Samples]),
    Value = lists:nth((?RUNS + 1) div 2, lists:sort(Samples)),
    io:format("{\"bench\": \"~s\", \"unit\": \"ops/s\", \"value\": ~.1f}~n", [Name, Value]).

isolated(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({result, Fun()}) end),
    receive
        {'DOWN', Ref, process, Pid, {result, V}} -> V;
        {'DOWN', Ref, process, Pid, Other} -> error({run_crashed, Other})
    end.

run(Op, Workers) ->
    T = ets:new(bench, [set, public, {read_concurrency, true}, {write_concurrency, true}]),
    [ets:insert(T, {K, K}) || K <- lists:seq(0, ?KEYS - 1)],
    Self = self(),
    T0 = erlang:monotonic_time(nanosecond),
    [spawn_link(fun() -> loop(Op, T, W * ?OPS, (W + 1) * ?OPS), Self ! done end)
     || W <- lists:seq(0, Workers - 1)],
    [receive done -> ok end || _ <- lists:seq(1, Workers)],
    T1 = erlang:monotonic_time(nanosecond),
    ets:delete(T),
    Workers * ?OPS / ((T1 - T0) / 1.0e9).

loop(_, _, End, End) ->
    ok;
loop(lookup, T, I, End) ->
    K = (I * ?MUL) band (?KEYS - 1),
    [_] = ets:lookup(T, K),
    loop(lookup, T, I + 1, End);
loop(insert, T, I, End) ->
    K = (I * ?MUL) band (?KEYS - 1),
    true = ets:insert(T, {K, I}),
    loop(insert, T, I + 1, End);
loop(counter, T, I, End) ->
    K = (I * ?MUL) band (?KEYS - 1),
    _ = ets:update_counter(T, K, 1),
    loop(counter, T, I + 1, End).
