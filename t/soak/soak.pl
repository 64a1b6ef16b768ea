#!/usr/bin/perl
# The soak (make soak): SOAK_TIME seconds (default 600) of mixed traffic,
# streamed and not, through a route whose providers fail, on 2 workers, with
# `nginx -s reload` every SOAK_RELOAD seconds (default 20).
#
# The route: "flaky" (weight 3), the built-in mock behind a fault server that
# turns a share of its requests into a 503, 500, 429, a closed connection, a
# stream that stalls before or after its first event, or a malformed reply;
# "down" (weight 1), the mock with `header X-Mock-Status 503` behind a
# breaker; and the fallback "good", the mock.  Virtual keys (llm_keys, with
# limits of their own) and two llm_limit_zone (a daily one that is never
# reached, for exact counts, and a concurrency one that is) refuse some.
#
# It asserts, and exits non-zero otherwise:
#   - no request lost: every request gets a complete HTTP answer, of the
#     status its kind allows, and exactly one access log line (matched by
#     X-Soak-Id); a client that leaves mid-stream gets its one line too;
#   - the status page's totals, per provider and per model (requests, error
#     classes, usage sources, five token counters, exact cost, attempts)
#     equal the sums over the access log; the limit zones' daily counts equal
#     the log's, their rejections the log's 429s, nothing left reserved or in
#     flight;
#   - worker and master RSS and open files flat after the warm-up, workers
#     back to their first open files once the load is over, old workers gone
#     soon after each reload;
#   - no [alert], [crit] or [emerg] in the error log, no worker killed.
#
# Environment: SOAK_TIME, SOAK_RELOAD, SOAK_CLIENTS (8), SOAK_SAMPLE (2 s),
# SOAK_WARMUP (60 s, a quarter of SOAK_TIME when shorter), SOAK_PAUSE (a
# client's pause between two requests, 0 to twice this, 20 ms),
# SOAK_MAX_REQUESTS (1000000), SOAK_SEED, SOAK_SERIES=1 (print every sample);
# LLM_MODULE, NGINX, LLM_TEST_KEEP as for the tests.
#
#   nice -n 19 make soak                  # 10 minutes
#   make soak SOAK_TIME=60                # a quick check

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";

use Test::More;
use LLMTest;
use LLMTest::Usage qw(status_decode parse_log COUNTERS);
use Digest::SHA qw(sha256_hex);
use POSIX ();
use Time::HiRes qw(time sleep);

$| = 1;

my $TIME    = $ENV{SOAK_TIME}    // 600;
my $RELOAD  = $ENV{SOAK_RELOAD}  // 20;
my $CLIENTS = $ENV{SOAK_CLIENTS} // 8;
my $SAMPLE  = $ENV{SOAK_SAMPLE}  // 2;
my $WARMUP  = $ENV{SOAK_WARMUP}  // ($TIME >= 240 ? 60 : int($TIME / 4));
my $MAXREQ  = $ENV{SOAK_MAX_REQUESTS} // 1_000_000;
my $PAUSE   = $ENV{SOAK_PAUSE}   // 20;
my $SEED    = $ENV{SOAK_SEED}    // (time() ^ $$) & 0xffffff;

# how long an old worker may take to finish its requests after a reload:
# the slowest request is a stream that stalls after its first event
# (read_timeout 2s) behind a few failed attempts
my $EXIT_MAX = 15;

# tolerances of "flat", in kB (see "reloads, workers, memory, files" below
# for why these)
my $MASTER_TOL_KB = $ENV{SOAK_MASTER_TOL_KB} // 256;
my $WORKER_TOL_KB = $ENV{SOAK_WORKER_TOL_KB} // 512;
my $GROW_TOL_KB   = $ENV{SOAK_GROW_TOL_KB}   // 64;

# ---------------------------------------------------------------------------
# the gateway

my @LOG_FIELDS = qw(id status provider model upstream_model stream input cache_read cache_write
                    output reasoning usage_source cost error upstream_status attempts failover
                    key limit_status request_time);
my $LOG_FORMAT = q{log_format soak '$http_x_soak_id|$status|$llm_provider|$llm_model|}
               . q{$llm_upstream_model|$llm_stream|$llm_input_tokens|$llm_cache_read_tokens|}
               . q{$llm_cache_write_tokens|$llm_output_tokens|$llm_reasoning_tokens|}
               . q{$llm_usage_source|$llm_cost|$llm_error|$llm_upstream_status|$llm_attempts|}
               . q{$llm_failover|$llm_key_name|$llm_limit_status|$request_time';};

my %KEYS = (alpha => 'sk-soak-alpha-0001', beta => 'sk-soak-beta-0002',
            gamma => 'sk-soak-gamma-0003', delta => 'sk-soak-delta-0004');

my $KEYS_FILE = '{"keys": [' . join(",\n", 
    qq({"name": "alpha", "key": "$KEYS{alpha}", "metadata": {"team": "a"}}),
    qq({"name": "beta", "key": "$KEYS{beta}", "limits": {"concurrent": 2}}),
    qq({"name": "gamma", "key": "sha256:) . sha256_hex($KEYS{gamma})
        . qq(", "limits": {"requests": "300/m"}}),
    qq({"name": "delta", "key": "$KEYS{delta}", "models": ["gpt-4o-mini", "text-embedding-3-small"]})) . "]}\n";

my $CONF = <<"CONF";
http {
    $LOG_FORMAT

    llm_zone soak 1m;

    llm_price gpt-4o-mini            input=0.15 output=0.6;
    llm_price gpt-4o                 input=2.5  output=10 cache_read=1.25;
    llm_price text-embedding-3-small input=0.02 output=0;

    llm_keys %%DIR%%/keys.json zone=keys:1m;

    # a daily window never reached (its counts are compared with the log),
    # and a concurrency limit that is
    llm_limit_zone day:1m   key=\$llm_key_name requests=1000000000/d
                            tokens=1000000000000/d spend=1000000/d;
    llm_limit_zone burst:1m key=\$llm_key_name concurrent=4;

    llm_provider flaky {
        url http://127.0.0.1:%%PORT_FAULT%%/v1;
        key sk-flaky;
        first_byte_timeout 500ms;
        read_timeout 2s;
        breaker failures=20 rate=60% window=10s cooldown=1s;
    }
    llm_provider down {
        url http://127.0.0.1:%%PORT_MOCK%%/v1;
        key sk-down;
        header X-Mock-Status 503;
        breaker failures=3 window=10s cooldown=2s;
    }
    llm_provider good {
        url http://127.0.0.1:%%PORT_MOCK%%/v1;
        key sk-good;
    }

    llm_route soak {
        provider flaky weight=3;
        provider down;
        fallback good;
    }

    # the fault server: the mock, with its fault headers on a share of the
    # requests (chosen by the fault server's own request id)
    split_clients "\${request_id}" \$soak_fault {
        20%  s503;
        3%   s500;
        1%   s429;
        4%   close;
        3%   stall;
        1%   midstall;
        2%   malformed;
        *    ok;
    }
    map \$soak_fault \$soak_status    { s503 503; s500 500; s429 429; default ""; }
    map \$soak_fault \$soak_malformed { malformed 1; default ""; }

    # a stall before the reply (a stream's headers and no event; no header
    # at all in read_timeout for another) is failed over; one in the middle
    # of the reply (a stream after 2 events, another after its headers and
    # half its body) cannot be: the client has part of the reply already
    map "\$soak_fault:\$http_x_soak_stream" \$soak_stall {
        stall:1     0;
        midstall:1  2;
        midstall:0  1;
        default     "";
    }
    map "\$soak_fault:\$http_x_soak_stream" \$soak_delay {
        stall:0     3000;
        default     \$http_x_mock_delay;
    }

    upstream soak_mock {
        server 127.0.0.1:%%PORT_MOCK%%;
        keepalive 16;
    }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        keepalive_timeout 2s;
        location /v1/ { llm_mock delay=2ms; }
    }

    server {
        listen 127.0.0.1:%%PORT_FAULT%%;
        access_log off;
        keepalive_timeout 2s;
        location /v1/ {
            if (\$soak_fault = close) { return 444; }
            proxy_pass http://soak_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Mock-Status \$soak_status;
            proxy_set_header X-Mock-Stall \$soak_stall;
            proxy_set_header X-Mock-Delay \$soak_delay;
            proxy_set_header X-Mock-Malformed \$soak_malformed;
            proxy_buffering off;
            proxy_read_timeout 30s;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log soak;
        keepalive_timeout 2s;
        location /v1/ {
            llm_pass soak;
            llm_limit day;
            llm_limit burst;
        }
        location = /status { access_log off; llm_status; }
    }
}
CONF

my $t = LLMTest->new(workers => 2, error_level => 'notice');
my $DIR = $t->dir;
$t->write_file('keys.json', $KEYS_FILE);
$t->run($CONF);
my $GW = $t->port('GW');
my $MASTER = $t->pid;

printf "# soak: %ds, reload every %ds, %d clients, sample every %ds, warm-up %ds, seed %d, dir %s\n",
       $TIME, $RELOAD, $CLIENTS, $SAMPLE, $WARMUP, $SEED, $DIR;

# the daily windows are UTC days: counts are compared only when the soak
# stays within one
my $DAY0 = int(time / 86400);

# ---------------------------------------------------------------------------
# /proc

sub proc_status_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return undef;
    while (<$fh>) { return $1 + 0 if /^VmRSS:\s+(\d+)\s+kB/ }
    return undef;
}

# open files: [ all, sockets, { what the others are => how many } ]
sub proc_fds {
    my ($pid) = @_;
    opendir my $dh, "/proc/$pid/fd" or return undef;
    my ($n, $s, %o) = (0, 0);
    for my $f (readdir $dh) {
        next if $f =~ /^\./;
        # (a file closed between the listing and now is not counted)
        my $l = readlink "/proc/$pid/fd/$f" // next;
        $n++;
        if ($l =~ /^socket:/) { $s++ } else { $l =~ s/\[\d+\]//; $o{$l}++ }
    }
    return [ $n, $s, \%o ];
}

sub proc_title {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/cmdline" or return '';
    local $/;
    my $c = <$fh> // '';
    $c =~ s/\0.*//s;
    $c =~ s/\s+\z//;
    return $c;
}

# the master's children: { pid => title }
sub children {
    my %c;
    opendir my $dh, '/proc' or return \%c;
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh> // next;
        my ($ppid) = $st =~ /\)\s+\S+\s+(\d+)/;
        next unless $ppid && $ppid == $MASTER;
        $c{$p} = proc_title($p);
    }
    return \%c;
}

sub current_workers {
    my $c = children();
    return sort { $a <=> $b } grep { $c->{$_} =~ /worker process\z/ } keys %$c;
}

# ---------------------------------------------------------------------------
# the load: each client sends requests until the deadline and writes one
# record a request (tab-separated) to its file

my %KIND_STATUS = (
    chat    => [ 200, 403, 429 ],
    stream  => [ 200, 403, 429 ],
    embed   => [ 200, 429 ],
    models  => [ 200 ],
    badjson => [ 400 ],
    nokey   => [ 401 ],
    badkey  => [ 401 ],
    abort   => [ 200, 403, 429 ],
);
my @KINDS = ([ chat => 36 ], [ stream => 38 ], [ abort => 4 ], [ embed => 6 ], [ models => 2 ],
             [ badjson => 2 ], [ nokey => 1 ], [ badkey => 1 ]);
my @KEYW  = ([ alpha => 40 ], [ beta => 30 ], [ gamma => 15 ], [ delta => 15 ]);
my @MODELS = ([ 'gpt-4o-mini' => 60 ], [ 'gpt-4o' => 30 ], [ 'soak-unpriced' => 10 ]);

sub pick {
    my ($list) = @_;
    my $sum = 0;
    $sum += $_->[1] for @$list;
    my $x = rand $sum;
    for my $e (@$list) {
        return $e->[0] if ($x -= $e->[1]) < 0;
    }
    return $list->[-1][0];
}

sub words { my $n = shift; return join ' ', map { ('lorem', 'ipsum', 'dolor', 'sit', 'amet')[rand 5] } 1 .. $n }

# one request: returns the record fields
sub one {
    my ($client, $id, $kind, $ka) = @_;
    my $key = pick(\@KEYW);
    my $model = $kind eq 'embed' ? 'text-embedding-3-small' : pick(\@MODELS);
    my @h = ('X-Soak-Id' => $id, 'X-Mock-Delay' => int(rand 10));
    push @h, 'Authorization' => "Bearer $KEYS{$key}" unless $kind eq 'nokey';
    $h[-1] = 'Bearer sk-soak-unknown' if $kind eq 'badkey';
    my $stream = $kind eq 'stream' || $kind eq 'abort';
    push @h, 'X-Soak-Stream' => $stream ? 1 : 0;
    push @h, 'X-Mock-Chunks' => 1 + int(rand 8), 'X-Mock-Chunk-Delay' => int(rand 6) if $kind eq 'stream';
    push @h, 'X-Mock-Chunks' => 30, 'X-Mock-Chunk-Delay' => 20 if $kind eq 'abort';

    my ($method, $path, $body) = ('POST', '/v1/chat/completions');
    if ($kind eq 'embed') {
        $path = '/v1/embeddings';
        $body = { model => $model, input => words(1 + int(rand 40)) };
    } elsif ($kind eq 'models') {
        ($method, $path) = ('GET', '/v1/models');
    } elsif ($kind eq 'badjson') {
        $body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"cut';
        push @h, 'Content-Type' => 'application/json';
    } else {
        $body = { model => $model,
                  messages => [ (rand() < 0.3 ? { role => 'system', content => words(10) } : ()),
                                { role => 'user', content => words(1 + int(rand 200)) } ],
                  (rand() < 0.3 ? (max_tokens => 16 + int(rand 500)) : ()),
                  ($stream ? (stream => JSON::PP::true) : ()),
                  ($stream && rand() < 0.5 ? (stream_options => { include_usage => JSON::PP::true }) : ()) };
    }

    if ($stream) {
        my $s = LLMTest::HTTP::Stream->open(port => $GW, path => $path, body => $body, headers => \@h,
                                            timeout => 30);
        return ($kind, 0, 0, 'no answer: ' . ($s->{error} // '?'), 0) unless $s->{status};
        if ($kind eq 'abort' && $s->{status} == 200) {
            for (1 .. 2) { $s->next_event(10) or last }
            # (a reply that was over already, a malformed one, is no abort)
            if (!$s->complete && $s->body !~ /\[DONE\]/) {
                $s->close(reset => 1);
                return ($kind, 200, 0, 'left', 0);
            }
        }
        $s->read_all(30);
        my $err = $s->complete ? '' : 'incomplete: ' . ($s->body_error // ($s->timed_out ? 'timeout' : '?'));
        my $note = $s->{status} != 200 ? ''
                 : $s->body =~ /"error"\s*:/ ? 'error-event'
                 : $s->body =~ /data: \[DONE\]\s*\z/ ? 'done' : 'no-done';
        $s->close;
        return ($kind, $s->{status}, $s->complete, $err, $note);
    }

    my $r;
    for my $try (1 .. 3) {
        my $reused = $ka && $ka->{conn} && !$ka->{conn}{eof};
        my $before = $ka ? $ka->connects : 0;
        $r = $ka ? $ka->request(method => $method, path => $path, headers => \@h, body => $body, timeout => 30)
                 : http_request(port => $GW, method => $method, path => $path, headers => \@h,
                                body => $body, timeout => 30);
        # a keepalive connection the server closed (a reload) just as the
        # request went out: nothing was answered, so the client sends it
        # again on a new connection, as HTTP clients do
        last unless $reused && !$r->{status} && ($r->{error} // '') =~ /closed before response header|send failed/
                    && $ka->connects == $before;
        $main::RETRIES++;
    }
    my $err = $r->{status} && $r->{complete} ? '' : 'no answer: ' . ($r->{error} // 'incomplete');
    my $note = $r->{status} == 429 ? (($r->{json} // {})->{error}{code} // '-') : '';
    return ($kind, $r->{status}, $r->{complete} ? 1 : 0, $err, $note);
}

sub client {
    my ($k, $deadline) = @_;
    srand($SEED + $k);
    open my $fh, '>', "$DIR/soak-client-$k" or POSIX::_exit(1);
    $fh->autoflush(1);
    # half of the clients keep their connections alive
    my $ka = $k % 2 ? LLMTest::HTTP::Client->new(port => $GW) : undef;
    my $n = 0;
    local $main::RETRIES = 0;
    while (time < $deadline && $n < $MAXREQ / $CLIENTS) {
        my $id = "c$k-" . $n++;
        my $kind = pick(\@KINDS);
        my $t0 = time;
        my $before = $main::RETRIES;
        my @r = eval { one($k, $id, $kind, $kind =~ /^(stream|abort)$/ ? undef : $ka) };
        @r = ($kind, 0, 0, "died: $@", '') unless @r;
        s/[\t\n]/ /g for @r;
        printf $fh "%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%d\n", $id, @r, time - $t0, $main::RETRIES - $before;
        sleep rand(2 * $PAUSE) / 1000 if $PAUSE;
    }
    close $fh;
    POSIX::_exit(0);
}

# ---------------------------------------------------------------------------
# sampling and reloads

my %EXTRA_FILES;  # files other than sockets a worker had beyond the first workers' -> most at once
my @SAMPLES;      # { t, gen, master => [rss, fds, socks], workers => { pid => [rss, fds, socks, others] },
                  #   children, old }
my %BORN;         # worker pid -> generation
my %BASE_FDS;     # the first workers' open files
my %GONE_AFTER;   # generation -> seconds its workers took to exit after the next reload
my @RELOADS;      # [ time, generation, seconds until the new workers ran ]
my $T0;           # the start of the load
my $GEN = 0;
my %GEN_START = (0 => 0);   # generation -> when it started (s from the start of the load)
my @STATUS_BAD;   # status page answers that were not valid JSON
my $STARTED;      # the zone's "started"
my $STATUS_BODY;  # the last answer of the status page

sub sample {
    my ($t0) = @_;
    my %w;
    my @cur = current_workers();
    for my $p (@cur) {
        $BORN{$p} //= $GEN;
        my $rss = proc_status_kb($p);
        my $fd = proc_fds($p);
        next unless defined $rss && $fd;
        $w{$p} = [ $rss, @$fd ];
        my ($b) = values %BASE_FDS;
        for my $f (keys %{$fd->[2]}) {
            my $extra = $fd->[2]{$f} - ($b->[2]{$f} // 0);
            $EXTRA_FILES{$f} = $extra if $extra > ($EXTRA_FILES{$f} // 0);
        }
    }
    my $mfd = proc_fds($MASTER) // [ -1, -1 ];
    my $c = children();
    my $old = grep { $c->{$_} =~ /shutting down/ } keys %$c;
    push @SAMPLES, { t => time - $t0, gen => $GEN, master => [ proc_status_kb($MASTER) // -1, @$mfd ],
                     workers => \%w, children => scalar keys %$c, old => $old };
}

sub check_status_page {
    my $r = http_request(port => $GW, path => '/status', timeout => 10);
    my $st = status_decode($r->{body});
    $STATUS_BODY = $r->{body};
    if ($r->{status} != 200 || ref $st ne 'HASH') {
        push @STATUS_BAD, "status $r->{status}: " . substr($r->{body} // '', 0, 200);
        return undef;
    }
    $STARTED //= $st->{started};
    push @STATUS_BAD, "started changed from $STARTED to $st->{started}" if $st->{started} != $STARTED;
    return $st;
}

sub reload {
    my @old = current_workers();
    my $t0 = time;
    my $out = $t->run_cmd($LLMTest::NGINX, '-p', "$DIR/", '-c', $t->conf_path, '-e', "$DIR/error.log",
                          '-s', 'reload');
    my $rc = $? >> 8;
    $GEN++;
    $GEN_START{$GEN} = $t0 - $T0;
    my %old = map { $_ => 1 } @old;
    my $ok = wait_for(sub { my @n = grep { !$old{$_} } current_workers(); @n >= 2 }, 10);
    push @RELOADS, [ $t0, $GEN, $ok ? time - $t0 : -1, $rc, $out ];
    # the old workers: how long they take to finish their requests
    my %watch = map { $_ => $t0 } @old;
    return \%watch;
}

# ---------------------------------------------------------------------------
# run

# the first workers, before any request: their open files are the baseline
wait_for(sub { my @w = current_workers(); @w == 2 }, 10);
%BASE_FDS = map { $_ => proc_fds($_) } current_workers();
my $BASE_MASTER_FDS = proc_fds($MASTER);
my $BASE_CHILDREN = keys %{children()};
check_status_page();

$T0 = time;
my $DEADLINE = $T0 + $TIME;
my @kids;
for my $k (0 .. $CLIENTS - 1) {
    my $pid = fork // die "fork: $!";
    client($k, $DEADLINE) unless $pid;
    push @kids, $pid;
}

my %watch;           # old worker pid -> reload time
my $next_sample = $T0;
my $next_reload = $T0 + $RELOAD;
my $running = @kids;
while ($running) {
    my $now = time;
    if ($now >= $next_sample) {
        sample($T0);
        $next_sample += $SAMPLE while $next_sample <= $now;
    }
    if ($now >= $next_reload && $now < $DEADLINE) {
        my $w = reload();
        %watch = (%watch, map { $_ => [ $w->{$_}, $GEN - 1 ] } keys %$w);
        check_status_page();
        $next_reload += $RELOAD;
    }
    for my $p (keys %watch) {
        next if kill 0, $p;
        my ($t_reload, $gen) = @{$watch{$p}};
        my $took = time - $t_reload;
        $GONE_AFTER{$gen} = $took if ($GONE_AFTER{$gen} // 0) < $took;
        delete $watch{$p};
    }
    while ((my $k = waitpid(-1, POSIX::WNOHANG())) > 0) { $running-- if grep { $_ == $k } @kids }
    sleep 0.05;
}
my $T_END = time;
# the last old workers
wait_for(sub { !grep { kill 0, $_ } keys %watch }, $EXIT_MAX);
for my $p (keys %watch) {
    my ($t_reload, $gen) = @{$watch{$p}};
    $GONE_AFTER{$gen} = (kill 0, $p) ? 1e9 : time - $t_reload;
}

# ---------------------------------------------------------------------------
# the clients' records

my (@recs, %sent);
for my $k (0 .. $CLIENTS - 1) {
    open my $fh, '<', "$DIR/soak-client-$k" or next;
    while (<$fh>) {
        chomp;
        my %r;
        @r{qw(id kind status complete err note time retries)} = split /\t/, $_, -1;
        push @recs, \%r;
        $sent{$r{id}} = \%r;
    }
}
my $N = @recs;
ok($N > 0, "the clients sent $N requests");

# the access log
my @raw;
wait_for(sub { @raw = $t->access_log('gw.log'); @raw >= $N }, 30);
my @lines = parse_log(\@LOG_FIELDS, @raw);
my %LINE = map { $_->{id} => $_ } @lines;

sub show_line {
    my ($id) = @_;
    my $l = $LINE{$id} or return 'no log line';
    return "log: $l->{status} $l->{failover} error $l->{error} usage $l->{usage_source} "
         . "in $l->{request_time} s";
}

sub first { my ($n, @l) = @_; return @l[0 .. ($#l < $n - 1 ? $#l : $n - 1)] }

# a stream that a provider broke off after its first event cannot fail over:
# the gateway ends it with an error event (see Known limits); it must say so
# in the log
my (@lost, @wrong, $broken);
for my $r (@recs) {
    next if $r->{kind} eq 'abort' && $r->{err} eq 'left';
    if ($r->{err} ne '' || !$r->{complete}) {
        my $l = $LINE{$r->{id}};
        if ($r->{kind} eq 'stream' && $r->{note} eq 'error-event' && $l && $l->{error} eq 'provider_stream_error') {
            $broken++;
            next;
        }
        push @lost, "$r->{id} ($r->{kind}): $r->{status} $r->{err}; " . show_line($r->{id});
        next;
    }
    push @wrong, "$r->{id} ($r->{kind}): status $r->{status}; " . show_line($r->{id})
        unless grep { $_ == $r->{status} } @{$KIND_STATUS{$r->{kind}}};
    push @wrong, "$r->{id} ($r->{kind}): stream not ended by [DONE] nor an error event; " . show_line($r->{id})
        if $r->{kind} eq 'stream' && $r->{status} == 200 && $r->{note} eq 'no-done';
}
is(scalar @lost, 0, 'no request lost: every request got a complete answer (or, for a stream the provider '
   . 'broke off, its error event and provider_stream_error in the log: ' . ($broken // 0) . ')')
    or diag(scalar(@lost) . " requests:\n" . join "\n", first(20, @lost));
is(scalar @wrong, 0, 'every answer has a status its kind allows')
    or diag(scalar(@wrong) . " requests:\n" . join "\n", first(20, @wrong));

# one line a request
my (%seen, @unknown);
for my $l (@lines) {
    $seen{$l->{id}}++;
    push @unknown, $l->{_line} unless $sent{$l->{id}};
}
my @missing = grep { !$seen{$_} } map { $_->{id} } @recs;
my @twice = grep { $seen{$_} > 1 } keys %seen;
is(scalar @missing, 0, "every request has an access log line ($N requests, " . scalar(@lines) . ' lines)')
    or diag('no line: ' . join ' ', map { "$_ ($sent{$_}{kind} $sent{$_}{status})" } first(20, @missing));
is(scalar @twice, 0, 'and only one') or diag('twice: ' . join ' ', first(20, @twice));
is(scalar @unknown, 0, 'no line for a request that was not sent') or diag(join "\n", first(10, @unknown));

{
    my @bad;
    for my $l (@lines) {
        my $r = $sent{$l->{id}} or next;
        if ($r->{kind} eq 'abort' && $r->{err} eq 'left') {
            push @bad, "$l->{id}: left mid-stream after $r->{time} s; " . show_line($l->{id})
                unless $l->{status} == 499 || $l->{error} eq 'client_closed_request';
        } elsif ($l->{status} != $r->{status}) {
            push @bad, "$l->{id}: the client got $r->{status}; " . show_line($l->{id});
        }
    }
    is(scalar @bad, 0, 'the log has the status each client got, and client_closed_request for those that left')
        or diag(scalar(@bad) . " requests:\n" . join "\n", first(20, @bad));
}

# ---------------------------------------------------------------------------
# the status page against the log

my $ST = check_status_page() // {};

# USD as a plain decimal <-> integers of 1e-12 USD, exact (native integers:
# the sums of a soak stay far below 2^63, and 100000 lines are summed fast)
sub pico {
    my ($usd) = @_;
    my ($i, $f) = "$usd" =~ /\A(\d+)(?:\.(\d{1,12}))?\z/ or die "not a plain decimal: '$usd'\n";
    return $i * 1_000_000_000_000 + substr(($f // '') . '0' x 12, 0, 12);
}

sub usd {
    my ($p) = @_;
    my ($q, $r);
    { use integer; $q = $p / 1_000_000_000_000; $r = $p % 1_000_000_000_000; }
    (my $f = sprintf '%012d', $r) =~ s/0+\z//;
    return length $f ? "$q.$f" : "$q";
}

sub failed_attempt { my $e = shift; return $e !~ /^\d+$/ || $e == 429 || $e >= 500 }

sub sums {
    my (@ls) = @_;
    my %s = (requests => scalar @ls, cost => 0, pico => 1, unpriced => 0, incomplete_streams => 0,
             errors => { map { $_ => 0 } qw(client rate_limited provider unavailable aborted) },
             usage_source => { map { $_ => 0 } qw(provider estimated none) },
             tokens => { map { $_ => 0 } COUNTERS },
             attempts => { total => 0, failed => 0 });
    for my $l (@ls) {
        $s{tokens}{$_} += $l->{$_} =~ /^\d+$/ ? $l->{$_} : 0 for COUNTERS;
        $s{usage_source}{$l->{usage_source}}++ if exists $s{usage_source}{$l->{usage_source}};
        if ($l->{cost} eq '-') { $s{unpriced}++ if $l->{usage_source} ne 'none' && $l->{usage_source} ne '-' }
        else { $s{cost} += pico($l->{cost}) }
        $s{incomplete_streams}++ if $l->{stream} eq '1' && $l->{usage_source} eq 'estimated';
        my $st = $l->{status};
        my $class = $st == 499 || ($st < 400 && $l->{error} eq 'client_closed_request') ? 'aborted'
                  : $st < 400 ? undef
                  : $st == 429 ? 'rate_limited'
                  : $st < 500 ? 'client'
                  : $l->{error} ne '-' && $l->{error} ne '' ? 'unavailable' : 'provider';
        $s{errors}{$class}++ if $class;
        next if $l->{failover} eq '-' || $l->{failover} eq '';
        for my $a (split /,/, $l->{failover}) {
            my (undef, $end) = split /:/, $a;
            $s{attempts}{total}++;
            $s{attempts}{failed}++ if failed_attempt($end);
        }
    }
    return \%s;
}

# attempts of one provider only (the log's $llm_failover names each)
sub provider_attempts {
    my ($p, @ls) = @_;
    my %a = (total => 0, failed => 0);
    for my $l (@ls) {
        next if $l->{failover} eq '-' || $l->{failover} eq '';
        for my $x (split /,/, $l->{failover}) {
            my ($q, $end) = split /:/, $x;
            next unless $q eq $p;
            $a{total}++;
            $a{failed}++ if failed_attempt($end);
        }
    }
    return \%a;
}

sub flat {
    my ($st, $attempts) = @_;
    return { missing => 1 } unless ref $st eq 'HASH';
    my %f = (requests => "$st->{requests}", unpriced => "$st->{unpriced}",
             incomplete_streams => $st->{incomplete_streams} // 'missing',
             cost => !defined $st->{cost} ? 'missing' : $st->{pico} ? usd($st->{cost}) : usd(pico($st->{cost})));
    $f{"tokens.$_"} = defined $st->{tokens}{$_} ? "$st->{tokens}{$_}" : 'missing' for COUNTERS;
    $f{"usage_source.$_"} = $st->{usage_source}{$_} // 'missing' for qw(provider estimated none);
    $f{"errors.$_"} = $st->{errors}{$_} // 'missing' for qw(client rate_limited provider unavailable aborted);
    if ($attempts) {
        $f{"attempts.$_"} = $attempts->{$_} // 'missing' for qw(total failed);
    }
    return \%f;
}

# every field that differs, status page against log
sub same {
    my ($got, $want, $name) = @_;
    my @d = map { "$_: status page " . ($got->{$_} // 'missing') . ', log ' . ($want->{$_} // 'missing') }
            grep { ($got->{$_} // 'missing') ne ($want->{$_} // 'missing') } sort keys %{{ %$got, %$want }};
    ok(!@d, $name) or diag(join "\n", @d);
}

# what may explain attempts that differ: requests refused by a limit before
# any provider was asked (no attempt in the log), replies a provider broke
# off midway (the log's $llm_failover ends them with their status, 200)
my $REFUSED = grep { $_->{limit_status} =~ /^REJECTED/ } @lines;
my $BROKEN = grep { $_->{failover} =~ /:200\z/ && ($_->{error} eq 'provider_stream_error'
                    || (($sent{$_->{id}}{err} // '') =~ /closed before end of body/)) } @lines;

$t->write_file('status.json', $STATUS_BODY // '');
my $S = sums(@lines);
is($ST->{evicted}, 0, 'nothing evicted from the statistics zone');
same(flat($ST->{total}, $ST->{total}{attempts}), flat($S, $S->{attempts}),
     'status total = the sums over the access log (requests, error classes, usage sources, '
     . 'incomplete streams, five token counters, exact cost, unpriced, attempts)')
    or diag("requests refused by a limit, no attempt in the log: $REFUSED; replies broken off midway, "
            . "\":200\" in the log: $BROKEN");
{
    my %byp;
    push @{$byp{$_->{provider}}}, $_ for grep { $_->{provider} ne '-' } @lines;
    for my $p (sort keys %byp) {
        same(flat($ST->{providers}{$p}), flat(sums(@{$byp{$p}})), "status providers.$p = its log sums");
    }
    my @attempted = sort keys %{{ map { (split /:/)[0] => 1 } map { split /,/ } grep { $_ ne '-' }
                                  map { $_->{failover} } @lines }};
    for my $p (@attempted) {
        same($ST->{providers}{$p}{attempts} // {}, provider_attempts($p, @lines),
             "status providers.$p.attempts = its attempts in the log");
    }
    my %bym;
    push @{$bym{$_->{upstream_model}}}, $_ for grep { $_->{provider} ne '-' && $_->{upstream_model} ne '-' } @lines;
    for my $m (sort keys %bym) {
        same(flat($ST->{models}{$m}), flat(sums(@{$bym{$m}})), "status models.$m = its log sums");
    }
}

# the limit zones
{
    my %bykey;
    push @{$bykey{$_->{key}}}, $_ for grep { $_->{key} ne '-' } @lines;
    my (@bad, @left);
    for my $k (sort keys %KEYS) {
        my @kl = @{$bykey{$k} // []};
        my $admitted = grep { $_->{limit_status} =~ /^(PASSED|CLAMPED)$/ } @kl;
        my $rejected = grep { $_->{limit_status} =~ /^REJECTED/ } @kl;
        my ($tokens, $spend) = (0, 0);
        for my $l (@kl) {
            next unless $l->{limit_status} =~ /^(PASSED|CLAMPED)$/;
            $tokens += $l->{$_} =~ /^\d+$/ ? $l->{$_} : 0 for qw(input output);
            $spend += pico($l->{cost}) if $l->{cost} ne '-';
        }
        my $day = $ST->{limits}{day}{keys}{$k} // {};
        my $burst = $ST->{limits}{burst}{keys}{$k} // {};
        my $kz = $ST->{limits}{keys}{keys}{$k} // {};
        if (int(time / 86400) == $DAY0) {
            push @bad, "$k: day requests used $day->{requests}{used}, the log admitted $admitted"
                if ($day->{requests}{used} // -1) != $admitted;
            push @bad, "$k: day tokens used $day->{tokens}{used}, the log has $tokens"
                if "" . ($day->{tokens}{used} // -1) ne "$tokens";
            push @bad, "$k: day spend used $day->{spend}{used}, the log has " . usd($spend)
                if usd(pico($day->{spend}{used} // 0)) ne usd($spend);
        }
        my $rej = ($day->{rejected} // 0) + ($burst->{rejected} // 0) + ($kz->{rejected} // 0);
        push @bad, "$k: $rej rejections in the zones, $rejected 429s of a limit in the log" if $rej != $rejected;
        for my $z ([ day => $day ], [ burst => $burst ], [ keys => $kz ]) {
            my ($zn, $e) = @$z;
            next unless %$e;
            push @left, "$zn/$k in_flight $e->{in_flight}" if $e->{in_flight};
            for my $d (qw(requests tokens spend)) {
                next unless ref $e->{$d} eq 'HASH';
                push @left, "$zn/$k $d reserved $e->{$d}{reserved}" if $e->{$d}{reserved} && $e->{$d}{reserved} ne '0';
            }
        }
    }
    is(scalar @bad, 0, 'limit zones: the daily counts (requests, tokens, exact spend) and the rejections of each key '
       . 'equal the log\'s') or diag(join "\n", @bad);
    is(scalar @left, 0, 'limit zones: nothing reserved or in flight once the load is over') or diag(join "\n", @left);
}

is(scalar @STATUS_BAD, 0, 'the status page was valid JSON, of the same zone, after every reload')
    or diag(join "\n", @STATUS_BAD[0 .. ($#STATUS_BAD < 9 ? $#STATUS_BAD : 9)]);

# ---------------------------------------------------------------------------
# reloads, workers, memory, files

{
    my @bad = grep { $_->[2] < 0 || $_->[3] != 0 } @RELOADS;
    is(scalar @bad, 0, scalar(@RELOADS) . ' reloads (nginx -s reload), each with its new workers running')
        or diag(join "\n", map { "reload $_->[1]: rc $_->[3], new workers after $_->[2] s: $_->[4]" } @bad);
    ok(kill(0, $MASTER) && $t->read_file('nginx.pid') + 0 == $MASTER, "the master ($MASTER) ran throughout");
    my @slow = grep { $GONE_AFTER{$_} > $EXIT_MAX } sort { $a <=> $b } keys %GONE_AFTER;
    is(scalar @slow, 0, "the old workers of every reload were gone within ${EXIT_MAX}s")
        or diag(join "\n", map { "generation $_: " . ($GONE_AFTER{$_} >= 1e9 ? 'still running' : "$GONE_AFTER{$_} s") } @slow);
}

# the workers' open files back to those of the first workers once the load
# is over and the idle keepalive connections have closed (keepalive_timeout
# 2s of the servers, which closes the gateway's cached connections too)
my %END_FDS;
{
    my $ok = wait_for(sub {
        %END_FDS = map { $_ => proc_fds($_) } current_workers();
        my @b = values %BASE_FDS;
        !grep { $_->[0] != $b[0][0] } values %END_FDS;
    }, 15);
    my ($b) = values %BASE_FDS;
    ok($ok, "workers idle after the load: open files as the first workers had ($b->[0], $b->[1] sockets)")
        or diag(join ', ', map { "worker $_: $END_FDS{$_}[0] files, $END_FDS{$_}[1] sockets" } sort keys %END_FDS);
}

# series after the warm-up, and from the second reload on: the master holds
# two configurations during its first reload and keeps that heap (6.5 MB,
# 4.9 MB after the next reload); the workers it forks then inherit it (8.4 MB,
# against 6.8 MB for those of later reloads)
my @post = grep { $_->{t} >= $WARMUP && $_->{gen} >= 2 } @SAMPLES;
my (%gen_peak, %gen_first, %gen_last);   # generation -> worker RSS (kB)
for my $s (@post) {
    my @w = values %{$s->{workers}};
    next unless @w;
    my $max = 0;
    $max < $_->[0] and $max = $_->[0] for @w;
    $gen_peak{$s->{gen}} = $max if ($gen_peak{$s->{gen}} // 0) < $max;
}

sub minmax {
    my @v = grep { defined && $_ >= 0 } @_;
    return (undef, undef) unless @v;
    my ($lo, $hi) = ($v[0], $v[0]);
    for (@v) { $lo = $_ if $_ < $lo; $hi = $_ if $_ > $hi }
    return ($lo, $hi);
}

# "flat": the second half of a series goes no higher than its first half by
# more than the tolerance
sub check_flat {
    my ($name, $tol, @v) = @_;
    if (@v < 4) { pass("$name: too short a series to judge (" . scalar(@v) . ' values)'); return }
    my $h = int(@v / 2);
    my (undef, $hi1) = minmax(@v[0 .. $h - 1]);
    my (undef, $hi2) = minmax(@v[$h .. $#v]);
    cmp_ok($hi2, '<=', $hi1 + $tol, "$name flat after the warm-up: the second half's peak $hi2 <= "
           . "the first half's $hi1 + $tol");
}

# the master's open files, less the two ends of the channel it keeps to
# each child (old workers still finishing their requests included)
my @m_rss = map { $_->{master}[0] } @post;
my @m_fds = map { $_->{master}[1] - 2 * $_->{children} } @post;
my @w_rss_max = map { my $m = 0; $m < $_->[0] and $m = $_->[0] for values %{$_->{workers}}; $m } @post;
my @w_rss_sum = map { my $m = 0; $m += $_->[0] for values %{$_->{workers}}; $m } @post;
my @w_fds_max = map { my $m = 0; $m < $_->[1] and $m = $_->[1] for values %{$_->{workers}}; $m } @post;
my @w_nonsock = map { my $m = 0; $m < $_->[1] - $_->[2] and $m = $_->[1] - $_->[2] for values %{$_->{workers}}; $m } @post;
my @g_peak = map { $gen_peak{$_} } sort { $a <=> $b } keys %gen_peak;

# The master re-reads the configuration at each reload (prices, keys,
# zones): a leak there grows it reload after reload, and every worker it
# forks after.  Measured in two 10-minute runs: its RSS settles within
# 60 kB over 29 reloads (heap fragmentation, in the first ones), and glibc
# gives memory back in steps of 128 kB (M_TRIM_THRESHOLD): 256 kB is two
# steps, and a leak of 20 kB a reload exceeds it over the 14 reloads of a
# half.
check_flat('master RSS (kB)', $MASTER_TOL_KB, @m_rss);
{
    my ($lo, $hi) = minmax(@m_fds);
    my $base = $BASE_MASTER_FDS->[0] - 2 * $BASE_CHILDREN;
    ok(defined $lo && $lo == $hi && $lo == $base, "master open files (less 2 a child) constant after the warm-up "
       . "($lo .. $hi) and as before the load ($base)");
}
# A generation's peak is its largest burst of concurrent requests (its
# pools, buffers, the 16k reply buffers): measured, peaks vary within
# 120 kB from one generation to the next.  512 kB is 4 times that; a
# growth of shared memory or of what the workers inherit shows here.
check_flat('worker RSS, the peak of each generation (kB)', $WORKER_TOL_KB, @g_peak);
check_flat('worker RSS, the largest worker of each sample (kB)', $WORKER_TOL_KB, @w_rss_max);

# within a generation: a worker's RSS at its last sample against that of 8 s
# into its generation, when the pools and buffers of its first requests
# have been allocated.  Later growth without a leak is a new peak of
# concurrency, in some generations; a leak grows every generation by what
# it loses a request: the median of the generations judges it.  Measured:
# medians of 20 and 28 kB (56 workers, at most 104 kB); a worker serves
# about 900 requests in those 12 s, so 64 kB catches a leak of 40 bytes a
# request.
my @grow;
{
    my (%early, %last);
    for my $s (@post) {
        for my $p (keys %{$s->{workers}}) {
            my $g = $BORN{$p} // next;
            next if $s->{t} - $GEN_START{$g} < 8;
            $early{$p} //= $s->{workers}{$p}[0];
            $last{$p} = $s->{workers}{$p}[0];
        }
    }
    @grow = sort { $a <=> $b } map { $last{$_} - $early{$_} } keys %early;
    if (@grow >= 2) {
        my $median = $grow[int($#grow / 2)];
        cmp_ok($median, '<=', $GROW_TOL_KB, "worker RSS within a generation: the median growth from 8 s into it "
               . "to its end, $median kB of " . scalar(@grow) . " workers (most $grow[-1] kB), <= $GROW_TOL_KB kB");
    } else {
        pass('worker RSS within a generation: too few workers to judge');
    }
}
{
    # open files of a worker besides its sockets: the logs, the listening
    # and shared memory files, epoll, eventfd: none is opened per request
    my ($lo, $hi) = minmax(@w_nonsock);
    my $b = (values %BASE_FDS)[0];
    is($hi, $b->[0] - $b->[1], "worker open files other than sockets constant (" . ($lo // '?') . ' .. '
       . ($hi // '?') . ')') or diag('beyond those of the first workers: '
                                    . join ', ', map { "$_ x$EXTRA_FILES{$_}" } sort keys %EXTRA_FILES);
}
# sockets follow the requests in flight: 8 clients hold at most a client
# connection, an attempt's connection and the fault server's two each, and
# each worker keeps up to 32 idle connections per provider and 16 to the
# mock: flat means the same ceiling in both halves
check_flat('worker open files, the largest worker of each sample', 4 * $CLIENTS, @w_fds_max);

# the error log
{
    my $log = $t->error_log;
    my @crash = grep { /exited on signal|segmentation|core dumped/i } split /\n/, $log;
    ok(!@crash, 'no worker exited on a signal') or diag(join "\n", @crash[0 .. ($#crash < 9 ? $#crash : 9)]);
    my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $log;
    ok(!@bad, 'no [alert], [crit] or [emerg] in the error log') or diag(join "\n", @bad[0 .. ($#bad < 19 ? $#bad : 19)]);
}

# ---------------------------------------------------------------------------
# the summary

{
    my (%kind, %status, %how, %src, %lim, $retries, %notes);
    for my $r (@recs) {
        $kind{$r->{kind}}++;
        $status{$r->{kind} eq 'abort' && $r->{err} eq 'left' ? 'left mid-stream' : $r->{status}}++;
        $retries += $r->{retries} // 0;
        $notes{$r->{note}}++ if $r->{kind} eq 'stream' && $r->{status} == 200;
    }
    my ($att, $fo) = (0, 0);
    for my $l (@lines) {
        $src{$l->{usage_source}}++;
        $lim{$l->{limit_status}}++;
        next if $l->{failover} eq '-';
        my @a = split /,/, $l->{failover};
        $att += @a;
        $fo++ if @a > 1;
        $how{(split /:/)[0] . ':' . (split /:/)[1]}++ for @a;
    }
    my $el = $T_END - $T0;
    my $fmt = sub { my %h = @_; join ', ', map { "$_ $h{$_}" } sort keys %h };
    print "#\n# ---- soak summary ----\n";
    printf "# %d requests in %.0f s (%.1f/s), %d clients, seed %d\n", $N, $el, $N / ($el || 1), $CLIENTS, $SEED;
    print "# kinds: ", $fmt->(%kind), "\n";
    print "# statuses: ", $fmt->(%status), "\n";
    print "# streams answered 200: ", $fmt->(%notes), "\n";
    print "# keepalive requests sent again after a reload closed their connection: ", $retries // 0, "\n";
    printf "# attempts: %d (%.2f a request with a provider), %d requests failed over\n", $att,
           $att / (grep({ $_->{failover} ne '-' } @lines) || 1), $fo;
    print "# attempts by provider:outcome: ", $fmt->(%how), "\n";
    print "# requests refused by a limit before any attempt: $REFUSED; replies a provider broke off midway: ",
          "$BROKEN\n";
    print "# usage source: ", $fmt->(%src), "\n";
    print "# limit status: ", $fmt->(%lim), "\n";
    print "# breakers opened: ", $fmt->(map { $_ => $ST->{breakers}{$_}{opened} } keys %{$ST->{breakers} // {}}), "\n";
    print "# status total: requests $ST->{total}{requests}, cost $ST->{total}{cost}, tokens ",
          join(' ', map { "$_=$ST->{total}{tokens}{$_}" } COUNTERS), "\n";
    my $gmax = 0;
    $gmax < $_ and $gmax = $_ for values %GONE_AFTER;
    printf "# reloads: %d, new workers within %.2f s, old workers gone within %.2f s\n", scalar @RELOADS,
           (sort { $b <=> $a } map { $_->[2] } @RELOADS)[0] // 0, $gmax;
    my $mm = sub { my ($lo, $hi) = minmax(@_); defined $lo ? "$lo .. $hi" : '-' };
    printf "# after the %d s warm-up and the first reload, %d samples:\n", $WARMUP, scalar @post;
    print "#   master RSS kB ", $mm->(@m_rss), ", open files less 2 a child ", $mm->(@m_fds), "\n";
    print "#   worker RSS kB (largest worker) ", $mm->(@w_rss_max), ", both workers ", $mm->(@w_rss_sum),
          ", generation peaks ", join(' ', @g_peak), "\n";
    print "#   worker RSS growth within a generation, kB: ", join(' ', @grow), "\n";
    print "#   worker open files (largest worker) ", $mm->(@w_fds_max), ", other than sockets ", $mm->(@w_nonsock), "\n";
    my ($b) = values %BASE_FDS;
    print "#   worker open files before the load $b->[0], after it ",
          join(' ', map { $_->[0] } values %END_FDS), "\n";
    my @all_rss = map { my $m = 0; $m < $_->[0] and $m = $_->[0] for values %{$_->{workers}}; $m } @SAMPLES;
    print "#   (whole run: worker RSS kB ", $mm->(@all_rss), ", master RSS kB ",
          $mm->(map { $_->{master}[0] } @SAMPLES), ")\n";
    if ($ENV{SOAK_SERIES}) {
        print "# t gen master_rss master_fds worker_rss... worker_fds... old\n";
        for my $s (@SAMPLES) {
            my @p = sort keys %{$s->{workers}};
            printf "# %.0f %d %d %d %s %s %d\n", $s->{t}, $s->{gen}, @{$s->{master}}[0, 1],
                   join(',', map { $s->{workers}{$_}[0] } @p), join(',', map { $s->{workers}{$_}[1] } @p), $s->{old};
        }
    }
}

$t->stop;
done_testing;
