# keel - the user's entry points. Everything real happens in CMake; this file
# names the builds and runs them.
#
#   make            build (build/)
#   make run        build and run the orders service, the flagship example (foreground;
#                   Ctrl-C stops it; SQLite under ./data, DATABASE_URL for PostgreSQL)
#   make run-microservice   build and run the reference microservice
#   make test       the whole suite: normal build, then ASan+UBSan, then the
#                   concurrency tests under TSan, then the portable context switch
#   make bench      the benchmarks (JSON lines)
#   make bench-compare   the same workloads on keel and on Erlang/OTP, side by side
#   make bench-http the HTTP server against Fastify and nginx (wrk)
#   make bench-orders   the orders service under wrk, on SQLite and PostgreSQL
#   make bench-jobs     durable jobs (SQLite, PostgreSQL) against BullMQ on Redis
#   make install    headers, libraries, keel.pc, CMake package (PREFIX=/usr/local)
#   make clean

PREFIX ?= /usr/local
JOBS ?= $(shell nproc)
WERROR ?= $(if $(CI),ON,OFF)
CMAKE_FLAGS ?=
DEPS_FLAGS ?=
CTEST = ctest --output-on-failure --no-tests=error

.PHONY: all build run run-microservice test test-release test-asan test-tsan test-portable test-cross test-install test-fuzz \
        bench bench-compare bench-http bench-orders bench-jobs install clean deps

all: build

deps:
	@scripts/install-deps.sh $(DEPS_FLAGS)

build/Makefile: deps
	cmake -S . -B build -DKEEL_WERROR=$(WERROR) $(CMAKE_FLAGS)

build: build/Makefile
	cmake --build build -j$(JOBS)

run: build
	./build/bin/orders

run-microservice: build
	./build/bin/microservice

test: deps test-release test-asan test-tsan test-portable test-cross test-install test-fuzz
	@echo "make test: all suites passed"

test-release:
	cmake -S . -B build -DKEEL_WERROR=$(WERROR) $(CMAKE_FLAGS)
	cmake --build build -j$(JOBS)
	$(CTEST) --test-dir build

test-asan:
	cmake -S . -B build-asan -DKEEL_WERROR=$(WERROR) -DKEEL_SANITIZE=address,undefined \
	      -DKEEL_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)
	cmake --build build-asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  KEEL_TEST_SANITIZER=asan $(CTEST) --test-dir build-asan

test-tsan:
	cmake -S . -B build-tsan -DKEEL_WERROR=$(WERROR) -DKEEL_SANITIZE=thread \
	      -DKEEL_BUILD_BENCH=OFF -DKEEL_BUILD_EXAMPLES=OFF $(CMAKE_FLAGS)
	cmake --build build-tsan -j$(JOBS)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp KEEL_TEST_SANITIZER=tsan \
	  $(CTEST) --test-dir build-tsan -L concurrency

# The portable (_setjmp/_longjmp) context switch, used where there is no
# assembly switch, runs the runtime's tests too.
test-portable:
	cmake -S . -B build-portable -DKEEL_WERROR=$(WERROR) -DKEEL_CONTEXT=portable \
	      -DKEEL_BUILD_BENCH=OFF -DKEEL_BUILD_EXAMPLES=OFF $(CMAKE_FLAGS)
	cmake --build build-portable -j$(JOBS)
	$(CTEST) --test-dir build-portable -L rt -E 'test_idle|test_memory'

# The AArch64 assembly context switch, cross-built and run under qemu.
test-cross:
	tests/ctx/run-cross.sh build

# Installs into a scratch prefix and builds a consumer with find_package and
# with pkg-config.
test-install: build
	tests/install/check.sh build

bench: build
	./build/bench/bench_rt
	./build/bench/bench_otp
	./build/bench/bench_metrics
	./build/bench/bench_log
	./build/bench/bench_observer
	./build/bench/bench_dashboard
	./build/bench/bench_table
	./build/bench/bench_http_parse
	./build/bench/bench_es
	./build/bench/bench_sub
	./build/bench/bench_trace

bench-compare: build
	@scripts/install-deps.sh --bench
	bench/compare-run.sh build 3

# keel's HTTP server against Fastify (Node.js, npm) and nginx, with wrk.
bench-http: build
	@scripts/install-deps.sh --bench
	ROUNDS=3 bench/http/run.sh build

# The orders service (examples/orders) under wrk: commands/s and latency on
# SQLite and on a throwaway PostgreSQL, in alternating rounds.
bench-orders: build
	@scripts/install-deps.sh --bench
	ROUNDS=3 bench/orders/run.sh build

# Durable jobs (bench_jobs --one) against BullMQ on a Redis started per round
# (default persistence, then AOF everysec and always), alternating rounds.
bench-jobs: build
	@scripts/install-deps.sh --bench
	ROUNDS=3 bench/jobs/run.sh build

# The HTTP request path under libFuzzer (clang, ASan+UBSan), FUZZ_SECONDS long.
test-fuzz:
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DKEEL_FUZZ=ON \
	      -DKEEL_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug \
	      -DKEEL_BUILD_BENCH=OFF -DKEEL_BUILD_EXAMPLES=OFF $(CMAKE_FLAGS)
	cmake --build build-fuzz -j$(JOBS) --target fuzz_http_request
	cd build-fuzz && $(CTEST) -L fuzz

install: build
	cmake --install build --prefix $(PREFIX)

clean:
	rm -rf build build-asan build-tsan build-portable build-fuzz
