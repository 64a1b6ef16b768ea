#!/usr/bin/perl
# llm_zone and llm_status with two workers: a concurrent mixed load (streams
# and not, several providers and models, 429/500 from the provider, a dead
# provider, gateway-side 4xx, client aborts mid-stream) and a reload in the
# middle of it; the status totals, per provider and per model, must be the
# exact sums over the access log (costs summed as exact decimals), and the
# error classes must match.  Then an undersized zone (32k, many model
# names): it keeps working, logs "is full", and its totals stay exact.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(:all);
use Math::BigInt;
use POSIX ();
use Time::HiRes qw(time sleep);

my @LOG_FIELDS = qw(req status provider model upstream_model stream input cache_read cache_write output
                    reasoning usage_source cost error upstream_status);
my $LOG_FORMAT = q{log_format llm '$http_x_req|$status|$llm_provider|$llm_model|$llm_upstream_model|$llm_stream|}
               . q{$llm_input_tokens|$llm_cache_read_tokens|$llm_cache_write_tokens|$llm_output_tokens|}
               . q{$llm_reasoning_tokens|$llm_usage_source|$llm_cost|$llm_error|$llm_upstream_status';};

# ---------------------------------------------------------------------------
# configuration checks

{
    my $t = LLMTest->new;
    my ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_zone small 16k;
    server { listen 127.0.0.1:%%PORT_A%%; location = /s { llm_status; } }
}
CONF
    isnt($rc, 0, 'llm_zone 16k: nginx -t fails (the minimum is 32k)');
    like($out, qr/llm_zone|zone size|16k/i, 'llm_zone 16k: the error names the zone or size') or diag($out);
    ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_zone small 32k;
    server { listen 127.0.0.1:%%PORT_A%%; location = /s { llm_status; } }
}
CONF
    is($rc, 0, 'llm_zone 32k: nginx -t passes') or diag($out);
    ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_zone a 64k;
    llm_zone b 64k;
    server { listen 127.0.0.1:%%PORT_A%%; }
}
CONF
    isnt($rc, 0, 'llm_zone twice: nginx -t fails');
}

# ---------------------------------------------------------------------------
# helpers shared by both phases

# the sums of a list of parsed log lines, in the status page's shape
sub sums {
    my (@ls) = @_;
    my %s = (requests => scalar @ls, cost => Math::BigInt->new(0), unpriced => 0, incomplete_streams => 0,
             errors => { map { $_ => 0 } qw(client rate_limited provider unavailable aborted) },
             usage_source => { map { $_ => 0 } qw(provider estimated none) },
             tokens => { map { $_ => Math::BigInt->new(0) } COUNTERS });
    for my $l (@ls) {
        $s{tokens}{$_} += Math::BigInt->new($l->{$_} =~ /^\d+$/ ? $l->{$_} : 0) for COUNTERS;
        $s{usage_source}{$l->{usage_source}}++;
        if ($l->{cost} eq '-') { $s{unpriced}++ if $l->{usage_source} ne 'none' }
        else { $s{cost} += usd_to_pico($l->{cost}) }
        $s{incomplete_streams}++ if $l->{stream} eq '1' && $l->{usage_source} eq 'estimated';
        my $st = $l->{status};
        my $class = $l->{aborted} ? 'aborted'
                  : $st == 499 ? 'aborted'
                  : $st == 429 ? 'rate_limited'
                  : $st >= 400 && $st < 500 ? 'client'
                  : $st >= 500 ? ($l->{error} ne '-' && $l->{error} ne '' ? 'unavailable' : 'provider')
                  : undef;
        $s{errors}{$class}++ if $class;
    }
    return \%s;
}

# flatten a STATS object of the status page (or of sums()) for is_deeply
sub flat {
    my ($st, $with_errors) = @_;
    return { missing => 1 } unless ref $st eq 'HASH';
    my %f = (requests => "$st->{requests}", unpriced => "$st->{unpriced}",
             cost => ref $st->{cost} eq 'Math::BigInt' ? pico_to_usd($st->{cost})
                   : defined $st->{cost} ? pico_to_usd(usd_to_pico("$st->{cost}")) : 'missing');
    $f{"tokens.$_"} = defined $st->{tokens}{$_} ? "$st->{tokens}{$_}" : 'missing' for COUNTERS;
    $f{"usage_source.$_"} = $st->{usage_source}{$_} // 'missing' for qw(provider estimated none);
    if ($with_errors) {
        $f{incomplete_streams} = $st->{incomplete_streams} // 'missing';
        $f{"errors.$_"} = $st->{errors}{$_} // 'missing' for qw(client rate_limited provider unavailable aborted);
    }
    return \%f;
}

sub wait_lines {
    my ($t, $file, $n) = @_;
    my @l = $t->wait_access_log($file, $n, 20);
    return @l;
}

sub status_ok {
    my ($t, $port, $want_requests) = @_;
    my ($r, $st);
    wait_for(sub { ($r, $st) = status_json($port, '/status');
                   ref $st eq 'HASH' && ($st->{total}{requests} // -1) >= $want_requests }, 10);
    return ($r, $st);
}

# ===========================================================================
# phase A: mixed load, 2 workers, reload in the middle

my $t = LLMTest->new(workers => 2, error_level => 'notice');

# the raw provider: usage with cached and reasoning tokens, derived from "req N"
sub raw_usage {
    my ($n, $model) = @_;
    my $p = 1000 + $n;
    my $cached = $n % 2 ? 0 : 512;
    my $c = 40 + $n % 17;
    my $reason = $model =~ /^o/ ? $n % 31 : 0;
    return qq({"prompt_tokens":$p,"completion_tokens":$c,"total_tokens":) . ($p + $c)
         . qq(,"prompt_tokens_details":{"cached_tokens":$cached,"audio_tokens":0},)
         . qq("completion_tokens_details":{"reasoning_tokens":$reason,"audio_tokens":0}});
}

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $j = $req->{json} // {};
    my ($n) = (($j->{messages} // [ {} ])->[0]{content} // '') =~ /req (\d+)/;
    $n //= 0;
    my $m = $j->{model} // 'x';
    my $u = raw_usage($n, $m);
    if ($j->{stream}) {
        my $pre = qq({"id":"chatcmpl-raw$n","object":"chat.completion.chunk","created":1745920000,"model":"$m",);
        my @ev = map { "data: $_\n\n" }
            $pre . '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
            $pre . '"choices":[{"index":0,"delta":{"content":"raw"},"finish_reason":null}],"usage":null}',
            $pre . '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
            $pre . qq("choices":[],"usage":$u}),
            '[DONE]';
        return [ [ send => sse_response(events => \@ev) ] ];
    }
    my $body = qq({"id":"chatcmpl-raw$n","object":"chat.completion","created":1745920000,"model":"$m",)
             . qq("choices":[{"index":0,"message":{"role":"assistant","content":"raw"},"finish_reason":"stop"}],"usage":$u});
    return [ [ send => LLMTest::FakeProvider::http_response(status => 200,
                 headers => [ 'Content-Type' => 'application/json' ], body => $body) ] ];
});

my $CONF = sub {
    my ($extra) = @_;
    return <<"CONF";
http {
    $LOG_FORMAT

    llm_zone stats 1m;
    $extra
    llm_price gpt-4o input=2.5 output=10 cache_read=1.25;
    llm_price gpt-4o-mini input=0.15 output=0.6;
    llm_price o3-mini input=1.1 output=4.4 cache_read=0.55;
    llm_price text-embedding-3-small input=0.02 output=0;

    llm_provider pa   { url http://127.0.0.1:%%PORT_MOCK%%/a/v1; key ka; }
    llm_provider pb   { url http://127.0.0.1:%%PORT_MOCK%%/b/v1; key kb; model mini gpt-4o-mini; model o3 o3-mini; }
    llm_provider raw  { url http://127.0.0.1:%%PORT_RAW%%/v1; key kr; }
    llm_provider dead { url http://127.0.0.1:%%PORT_CLOSED%%/v1; key kd; connect_timeout 2s; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location / { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /a/v1/    { llm_pass pa; }
        location /b/v1/    { llm_pass pb; }
        location /raw/v1/  { llm_pass raw; }
        location /dead/v1/ { llm_pass dead; }
        location = /status { access_log off; llm_status; }
    }
}
CONF
};
$t->run($CONF->(''));
my $gw = $t->port('GW');

my @KINDS = qw(a-chat a-stream a-unpriced b-mini b-o3-stream raw-chat raw-stream rate p500 dead
               badjson nomodel abort embed);
my %KIND_STATUS = (rate => 429, p500 => 500, dead => 502, badjson => 400, nomodel => 404);

sub job {
    my ($i, $tag) = @_;
    my $kind = $KINDS[$i % @KINDS];
    my $id = "$tag-$i-$kind";
    my $content = "req $i " . ('x' x ($i % 53));
    my %p = (a => '/a/v1', b => '/b/v1', raw => '/raw/v1', dead => '/dead/v1');
    my ($prefix, $model, $stream, @h) = @{{
        'a-chat'      => [ 'a', 'gpt-4o', 0 ],
        'a-stream'    => [ 'a', 'gpt-4o', 1 ],
        'a-unpriced'  => [ 'a', 'llama-local', 1 ],
        'b-mini'      => [ 'b', 'mini', 0 ],
        'b-o3-stream' => [ 'b', 'o3', 1 ],
        'raw-chat'    => [ 'raw', 'o3-mini', 0 ],
        'raw-stream'  => [ 'raw', 'gpt-4o', 1 ],
        'rate'        => [ 'a', 'gpt-4o', $i % 2, 'X-Mock-Status' => 429 ],
        'p500'        => [ 'a', 'gpt-4o-mini', $i % 2, 'X-Mock-Status' => 500 ],
        'dead'        => [ 'dead', 'gpt-4o', $i % 2 ],
        'badjson'     => [ 'a', 'gpt-4o', 0 ],
        'nomodel'     => [ 'b', 'no-such-model', 0 ],
        'abort'       => [ 'a', 'gpt-4o', 1, 'X-Mock-Chunks' => 40, 'X-Mock-Chunk-Delay' => 25 ],
        'embed'       => [ 'a', 'text-embedding-3-small', 0 ],
    }->{$kind}};
    # batch 2 is slowed down a little so that the reload falls in the middle of it
    push @h, 'X-Mock-Delay' => 15 if $tag eq 'b2' && $prefix =~ /^[ab]$/ && $kind ne 'abort';
    my @headers = ('X-Req' => $id, @h);
    my $body = { model => $model, messages => [ { role => 'user', content => $content } ],
                 ($stream ? (stream => JSON::PP::true) : ()) };
    my $path = "$p{$prefix}/chat/completions";
    if ($kind eq 'embed') {
        $body = { model => $model, input => $content };
        $path = "$p{$prefix}/embeddings";
    }
    $body = '{"model":"gpt-4o","messages":[' if $kind eq 'badjson';

    if ($kind eq 'abort') {
        my $s = LLMTest::HTTP::Stream->open(port => $gw, path => $path, body => $body, headers => \@headers,
                                            timeout => 10);
        return "$id: status $s->{status}" if $s->{status} != 200;
        for (1 .. 2) { $s->next_event(5) or return "$id: no event" }
        $s->close(reset => 1);
        return '';
    }
    my $r = http_request(port => $gw, method => 'POST', path => $path, timeout => 20,
                         headers => [ @headers, (ref $body ? () : ('Content-Type' => 'application/json')) ],
                         body => $body);
    my $want = $KIND_STATUS{$kind} // 200;
    return "$id: status $r->{status}, expected $want " . ($r->{error} // '') if $r->{status} != $want;
    return "$id: incomplete response" unless $r->{complete};
    return '';
}

my %SENT;    # req id -> kind

sub batch {
    my ($tag, $n, $par, $during) = @_;
    $SENT{"$tag-$_-" . $KINDS[$_ % @KINDS]} = $KINDS[$_ % @KINDS] for 0 .. $n - 1;
    return $t->parallel($tag, $n, $par, sub { job($_[0], $tag) }, $during);
}

sub check_against_log {
    my ($label, $st, @lines) = @_;
    my %aborted = map { $_ => 1 } grep { $SENT{$_} eq 'abort' } keys %SENT;
    $_->{aborted} = $aborted{$_->{req}} for @lines;

    my @cut = grep { $_->{aborted} && $_->{status} == 200 } @lines;
    is(scalar(grep { $_->{error} ne 'client_closed_request' } @cut), 0,
       "$label: the " . @cut . ' streams the client left are logged with client_closed_request');

    is_deeply(flat($st->{total}, 1), flat(sums(@lines), 1),
              "$label: total = the sums over the access log (requests, error classes, incomplete streams, "
              . 'usage sources, five token counters, exact cost, unpriced)');

    my %byp;
    push @{$byp{$_->{provider}}}, $_ for @lines;
    for my $p (sort grep { $_ ne '-' } keys %byp) {
        is_deeply(flat($st->{providers}{$p}, 1), flat(sums(@{$byp{$p}}), 1), "$label: providers.$p = its log sums");
    }
    my %bym;
    push @{$bym{$_->{upstream_model}}}, $_ for grep { $_->{provider} ne '-' } @lines;
    for my $m (sort keys %bym) {
        is_deeply(flat($st->{models}{$m}, 1), flat(sums(@{$bym{$m}}), 1), "$label: models.$m = its log sums");
    }
    is_deeply([ sort keys %{$st->{providers} // {}} ], [ sort grep { $_ ne '-' } keys %byp ],
              "$label: one provider entry per provider seen");
    is_deeply([ sort keys %{$st->{models} // {}} ], [ sort keys %bym ], "$label: one model entry per upstream model seen");

    # the parts add up to the whole
    my %add = (requests => 0, cost => Math::BigInt->new(0), map { ("t.$_" => Math::BigInt->new(0)) } COUNTERS);
    for my $ps (values %{$st->{providers} // {}}) {
        $add{requests} += $ps->{requests};
        $add{cost} += usd_to_pico("$ps->{cost}");
        $add{"t.$_"} += Math::BigInt->new("$ps->{tokens}{$_}") for COUNTERS;
    }
    my @noprov = grep { $_->{provider} eq '-' } @lines;
    my $np = sums(@noprov);
    is_deeply({ map { $_ => "$add{$_}" } keys %add },
              { requests => $st->{total}{requests} - @noprov,
                cost => '' . (usd_to_pico("$st->{total}{cost}") - $np->{cost}),
                map { ("t.$_" => '' . (Math::BigInt->new("$st->{total}{tokens}{$_}") - $np->{tokens}{$_})) } COUNTERS },
              "$label: the providers add up to the total (less " . scalar(@noprov) . ' requests that never had a provider)');
}

# --- batch 1 ----------------------------------------------------------------

my $t0 = time;
{
    my @fail = batch('b1', 168, 8);
    is(scalar @fail, 0, 'batch 1: 168 mixed requests in 8 parallel clients as expected')
        or diag(join "\n", @fail[0 .. ($#fail > 10 ? 10 : $#fail)]);
}
my @l1 = wait_lines($t, 'gw.log', 168);
is(scalar @l1, 168, 'batch 1: 168 access log lines');
my ($r1, $st1) = status_ok($t, $gw, 168);
is($r1->{status}, 200, 'llm_status: 200');
like($r1->{headers}{'content-type'} // '', qr{^application/json}, 'llm_status: Content-Type application/json');
ok(ref $st1 eq 'HASH', 'llm_status: valid JSON') or diag(substr($r1->{body} // '', 0, 500));
$st1 //= {};
is($st1->{zone}, 'stats', 'llm_status: zone name');
{
    my $r = http_request(port => $gw, method => 'POST', path => '/status', body => '{}');
    is($r->{status}, 405, 'llm_status: POST -> 405');
}
ok(defined $st1->{started} && defined $st1->{now} && $st1->{started} <= $st1->{now}, 'llm_status: started <= now');
is($st1->{evicted}, 0, 'llm_status: nothing evicted from a 1m zone');
check_against_log('batch 1', $st1, parse_log(\@LOG_FIELDS, @l1));

{
    my @lines = parse_log(\@LOG_FIELDS, @l1);
    my @ab = grep { ($SENT{$_->{req}} // '') eq 'abort' } @lines;
    ok(@ab > 0, 'client aborts mid-stream were logged (' . scalar(@ab) . ')');
    is(scalar(grep { $_->{usage_source} eq 'estimated' } @ab), scalar @ab,
       'a client abort mid-stream logs $llm_usage_source estimated');
    my %codes;
    $codes{$_->{status}}++ for @ab;
    diag('client aborts mid-stream are logged with $status ' . join(', ', map { "$_ x$codes{$_}" } sort keys %codes));
    is($st1->{total}{errors}{aborted}, scalar @ab, 'llm_status: every client abort is counted under errors.aborted');
    cmp_ok($st1->{total}{incomplete_streams} // 0, '>=', scalar @ab,
           'llm_status: client aborts mid-stream are counted as incomplete_streams');
    my %want = (rate_limited => 'rate', provider => 'p500', unavailable => 'dead');
    for my $c (sort keys %want) {
        my $n = grep { ($SENT{$_->{req}} // '') eq $want{$c} } @lines;
        is($st1->{total}{errors}{$c}, $n, "llm_status: errors.$c counts the $want{$c} requests ($n)");
    }
    my $nc = grep { ($SENT{$_->{req}} // '') =~ /^(badjson|nomodel)$/ } @lines;
    is($st1->{total}{errors}{client}, $nc, "llm_status: errors.client counts the gateway's 400/404 ($nc)");
    cmp_ok($st1->{total}{unpriced}, '>', 0, 'llm_status: the unpriced model is counted under unpriced');
    is($st1->{models}{'llama-local'}{unpriced}, $st1->{models}{'llama-local'}{requests},
       'llm_status: every request of the unpriced model is unpriced');

    for my $sect ([ total => $st1->{total} ], map { [ "providers.$_" => $st1->{providers}{$_} ] } qw(pa raw)) {
        my ($n, $s) = @$sect;
        for my $h (qw(latency_ms ttft_ms)) {
            my $p = $s->{$h} // {};
            my @v = @$p{qw(p50 p95 p99)};
            ok(!grep({ !defined || !/^\d+$/ } @v) && $v[0] <= $v[1] && $v[1] <= $v[2],
               "llm_status $n.$h: p50 <= p95 <= p99, integers") or diag(json_encode($p));
        }
    }
}

# --- batch 2, with a reload in the middle -------------------------------------

my $started = $st1->{started};
{
    my ($reloaded, $before, $after) = (0);
    my @fail = batch('b2', 336, 10, sub {
        wait_for(sub { $t->done_count('b2') >= 100 }, 30);
        $before = $t->done_count('b2');
        # the new configuration prices the model that was unpriced (same zone name and size)
        $reloaded = $t->reload($CONF->('llm_price llama-local input=0.2 output=0.4;'));
        $after = $t->done_count('b2');
    });
    ok($reloaded, 'reload (HUP) in the middle of batch 2: new workers started');
    ok($before < 336, "the reload happened under load ($before of 336 requests done at HUP, $after when "
                      . 'the new workers had started)');
    is(scalar @fail, 0, 'batch 2: 336 mixed requests in 10 parallel clients, across a reload, as expected')
        or diag(join "\n", @fail[0 .. ($#fail > 10 ? 10 : $#fail)]);
}
my $ALL = 168 + 336;
my @l2 = wait_lines($t, 'gw.log', $ALL);
is(scalar @l2, $ALL, "after the reload: $ALL access log lines");
my ($r2, $st2) = status_ok($t, $gw, $ALL);
$st2 //= {};
is($st2->{total}{requests}, $ALL, "after the reload: total.requests = $ALL requests sent (nothing lost)");
is($st2->{started}, $started, 'after the reload: the zone is the same (started unchanged)');
cmp_ok($st2->{models}{'llama-local'}{unpriced}, '<', $st2->{models}{'llama-local'}{requests},
       'after the reload: the new price is in effect (llama-local partly priced)');
check_against_log('after the reload', $st2, parse_log(\@LOG_FIELDS, @l2));
note(sprintf 'phase A: %.1fs', time - $t0);

$t->finish;

# ===========================================================================
# phase B: an undersized zone with many model names

{
    my $t = LLMTest->new(workers => 2, error_level => 'notice');
    $t->run(<<"CONF");
http {
    $LOG_FORMAT
    llm_zone tiny 32k;
    llm_price gpt-4o input=2.5 output=10;
    llm_provider pa { url http://127.0.0.1:%%PORT_MOCK%%/v1; key ka; }
    server { listen 127.0.0.1:%%PORT_MOCK%%; access_log off; location / { llm_mock; } }
    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /v1/ { llm_pass pa; }
        location = /status { access_log off; llm_status; }
    }
}
CONF
    my $gw = $t->port('GW');
    my $N = 240;
    my $t1 = time;
    my @fail = $t->parallel('tiny', $N, 8, sub {
        my ($i) = @_;
        # every 4th request is the priced gpt-4o, the others each a new model name
        my $model = $i % 4 ? sprintf('model-%03d-', $i) . ('n' x ($i % 90)) : 'gpt-4o';
        my $stream = $i % 3 == 0;
        my $body = { model => $model, messages => [ { role => 'user', content => "tiny $i" } ],
                     ($stream ? (stream => JSON::PP::true) : ()) };
        if ($stream) {
            my $s = LLMTest::HTTP::Stream->open(port => $gw, path => '/v1/chat/completions', body => $body,
                                                headers => [ 'X-Req' => "tiny-$i" ], timeout => 10);
            $s->read_all(10);
            return "status $s->{status}" unless $s->{status} == 200 && $s->complete;
            return '';
        }
        my $r = http_request(port => $gw, method => 'POST', path => '/v1/chat/completions', body => $body,
                             headers => [ 'X-Req' => "tiny-$i" ], timeout => 10);
        return $r->{status} == 200 ? '' : "status $r->{status}";
    });
    is(scalar @fail, 0, "undersized zone: $N requests with " . int($N * 3 / 4) . ' distinct model names all succeed')
        or diag(join "\n", @fail[0 .. ($#fail > 5 ? 5 : $#fail)]);
    my @lines = parse_log(\@LOG_FIELDS, wait_lines($t, 'gw.log', $N));
    is(scalar @lines, $N, "undersized zone: $N access log lines");
    my ($r, $st) = status_ok($t, $gw, $N);
    is($r->{status}, 200, 'undersized zone: llm_status still answers 200');
    ok(ref $st eq 'HASH', 'undersized zone: llm_status is valid JSON') or diag(substr($r->{body} // '', 0, 300));
    $st //= {};
    my @full = grep { /llm_zone.*is full/ } split /\n/, $t->error_log;
    ok(@full > 0, 'undersized zone: "is full" is logged (' . scalar(@full) . ' times)');
    cmp_ok($st->{evicted} // 0, '>', 0, "undersized zone: evicted = " . ($st->{evicted} // 'undef'));
    # the "is full" line comes once a minute at most, with the count so far
    is(scalar @full, 1, 'undersized zone: "is full" is logged once (the test takes less than a minute)');
    my ($logged) = ($full[0] // '') =~ /(\d+) dropped since the start/;
    ok($logged && $logged <= $st->{evicted}, 'undersized zone: the line says how many were dropped so far')
        or diag($full[0]);
    is_deeply(flat($st->{total}), flat(sums(@lines)), 'undersized zone: the totals are still the exact log sums');
    is_deeply(flat($st->{providers}{pa}), flat(sums(@lines)),
              'undersized zone: the provider (used by every request, never the least recently used) is exact');
    my $nm = keys %{$st->{models} // {}};
    cmp_ok($nm, '<', int($N * 3 / 4), "undersized zone: only $nm model entries fit");
    my %logn;
    $logn{$_->{upstream_model}}++ for @lines;
    my @over = grep { $st->{models}{$_}{requests} > ($logn{$_} // 0) } keys %{$st->{models} // {}};
    is(scalar @over, 0, 'undersized zone: no model entry counts more requests than the log has')
        or diag("@over");
    note(sprintf 'phase B: %.1fs', time - $t1);
    $t->finish;
}

done_testing;
