# nginx-llm-gateway: build, test, demo, bench.
#
# The module is built against the headers and configure script of Debian's
# nginx-dev, with the flags of the distribution's own nginx binary, so that
# the .so loads into /usr/sbin/nginx as shipped.

SHELL       := /bin/bash

NGX_SRC     ?= /usr/share/nginx/src
BUILD       ?= build
NGX_BUILD    = $(BUILD)/nginx
MODULE       = $(NGX_BUILD)/objs/ngx_http_llm_module.so
NGINX       ?= /usr/sbin/nginx
PROVE       ?= prove

DEB_BUILD    = nginx nginx-dev libpcre2-dev zlib1g-dev libssl-dev \
               libcjson-dev make gcc
DEB_TEST     = curl openssl perl
DEB_BENCH    = wrk nodejs

SRCS = $(wildcard src/*.c src/*.h) config

.PHONY: all build deps deps-test deps-bench test test-unit test-compat \
        demo demo-stop bench bench-failover clean install

all: build

build: $(MODULE)

deps:
	@sh tools/deps.sh $(DEB_BUILD)

deps-test: deps
	@sh tools/deps.sh $(DEB_TEST)
	@command -v node >/dev/null && command -v npm >/dev/null \
	    || sh tools/deps.sh nodejs npm

deps-bench: deps
	@sh tools/deps.sh $(DEB_BENCH)

$(NGX_BUILD)/Makefile: config | deps
	rm -rf $(NGX_BUILD)
	mkdir -p $(BUILD)
	cp -r $(NGX_SRC) $(NGX_BUILD)
	. $(NGX_SRC)/conf_flags && cd $(NGX_BUILD) && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt='-Wextra -Wno-unused-parameter -Wno-missing-field-initializers' \
	        --add-dynamic-module=$(CURDIR) >configure.log 2>&1 || \
	    { tail -30 configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/Makefile $(SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules

test: build deps-test
	$(PROVE) -I t/lib -r t/
	$(MAKE) test-compat

test-compat: build deps-test
	cd t/compat && sh run.sh

demo: build deps-test
	@sh tools/demo.sh $(CURDIR)/$(MODULE)

demo-stop:
	@sh tools/demo.sh --stop

# make bench: a quick run of every point (3 rounds of 2 s); make bench
# FULL=1: the README's table (5 rounds of 8 s); see bench/run.sh
bench: build deps-bench
	@sh bench/run.sh $(CURDIR)/$(MODULE)

bench-failover: build deps-bench
	@sh bench/failover.sh $(CURDIR)/$(MODULE)

install: build
	install -D -m 0644 $(MODULE) /usr/lib/nginx/modules/ngx_http_llm_module.so

clean:
	rm -rf $(BUILD)

# Sanitizers and fuzzers: nginx built whole from Debian's source package
# (tools/nginx-source.sh adds a deb-src line and runs apt-get source) with
# clang, ASan, UBSan and NGX_DEBUG_PALLOC.  test-asan runs the whole test
# suite under it and fails on any sanitizer report; fuzz runs each libFuzzer
# harness of fuzz/ for FUZZ_TIME seconds (make fuzz FUZZ_TIME=3600 for a
# campaign).

DEB_SAN      = clang libclang-rt-dev dpkg-dev libpcre2-dev zlib1g-dev \
               libssl-dev libcjson-dev make perl
FUZZ_TIME   ?= 60

.PHONY: deps-san test-asan fuzz

deps-san: deps
	@sh tools/deps.sh $(DEB_SAN)

test-asan: deps-san deps-test
	@bash tools/asan.sh $(BUILD)/asan

fuzz: deps-san
	@FUZZ_TIME=$(FUZZ_TIME) bash fuzz/run.sh $(BUILD)/fuzz

# The soak (t/soak/soak.pl): SOAK_TIME seconds of mixed traffic, streamed
# and not, through a route whose providers fail, on 2 workers, with a reload
# every 20 seconds; it fails on a request without its answer or log line,
# status totals that differ from the log's, growing memory or open files,
# or an [alert]/[crit]/[emerg].  Not part of make test (make soak
# SOAK_TIME=60 for a quick check).

SOAK_TIME   ?= 600

.PHONY: soak

soak: build deps
	@sh tools/deps.sh perl
	SOAK_TIME=$(SOAK_TIME) LLM_MODULE=$(abspath $(MODULE)) NGINX=$(NGINX) \
	    perl -I t/lib t/soak/soak.pl
