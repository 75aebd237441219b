%% port_bench: the BEAM side of bench/bench_port.c, the same three workloads
%% with open_port, printed as JSON lines (the median of three runs each):
%%   port_start     open /bin/true with exit_status, wait for it: ports per second
%%   port_echo_rtt  one line to cat and back ({line, 4096}): round trips per second
%%   port_lines_in  seq 1 1000000 read with {line, 4096}: lines per second
-module(port_bench).
-export([main/0]).

-define(START_N, 300).
-define(ECHO_N, 20000).
-define(LINES_N, 1000000).

main() ->
    report("port_start", "ports/s", fun port_start/0),
    report("port_echo_rtt", "roundtrips/s", fun port_echo_rtt/0),
    report("port_lines_in", "lines/s", fun port_lines_in/0).

report(Name, Unit, F) ->
    Runs = lists:sort([F() || _ <- [1, 2, 3]]),
    [io:format(standard_error, "  ~s run: ~.1f ~s~n", [Name, V, Unit]) || V <- Runs],
    io:format("{\"bench\": \"~s\", \"unit\": \"~s\", \"value\": ~.1f}~n",
              [Name, Unit, lists:nth(2, Runs)]).

now_s() -> erlang:monotonic_time(nanosecond) / 1.0e9.

port_start() ->
    T0 = now_s(),
    lists:foreach(fun(_) ->
        P = open_port({spawn_executable, "/bin/true"}, [exit_status]),
        receive {P, {exit_status, _}} -> ok end
    end, lists:seq(1, ?START_N)),
    ?START_N / (now_s() - T0).

port_echo_rtt() ->
    P = open_port({spawn_executable, "/bin/cat"}, [{line, 4096}, binary, use_stdio]),
    T0 = now_s(),
    echo(P, ?ECHO_N),
    R = ?ECHO_N / (now_s() - T0),
    port_close(P),
    R.

echo(_, 0) -> ok;
echo(P, N) ->
    port_command(P, <<"hello\n">>),
    receive {P, {data, {eol, _}}} -> echo(P, N - 1) end.

port_lines_in() ->
    T0 = now_s(),
    P = open_port({spawn_executable, "/usr/bin/seq"},
                  [{args, ["1", integer_to_list(?LINES_N)]}, {line, 4096}, binary, exit_status]),
    ?LINES_N = count(P, 0),
    ?LINES_N / (now_s() - T0).

count(P, N) ->
    receive
        {P, {data, {eol, _}}} -> count(P, N + 1);
        {P, {exit_status, _}} -> N
    end.
