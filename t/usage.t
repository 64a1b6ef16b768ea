#!/usr/bin/perl
# Usage accounting against a corpus of real-shaped provider replies
# (t/fixtures/usage/*.json, see t/fixtures/README.md): a raw fake provider
# serves each fixture's exact bytes (whole, split inside the usage object,
# byte by byte), and the test checks the $llm_* usage variables in the
# access log (exact counts, $llm_usage_source, $llm_cost), what the client
# received (OpenAI streams: the usage the gateway asked for is not shown to a
# client that did not ask), what the provider received (include_usage
# injected or not), and that the llm_status totals are the sums of the log.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(:all);
use Math::BigInt;
use Time::HiRes qw(time sleep);

my $FIX = "$FindBin::Bin/fixtures";
my @FX = load_fixtures("$FIX/usage");
my %FX = map { $_->{name} => $_ } @FX;
my $PRICES = load_prices(conf => "$FIX/usage-prices.conf", json => "$FIX/usage-prices.json");

cmp_ok(scalar @FX, '>=', 30, scalar(@FX) . ' usage fixtures');

# ---------------------------------------------------------------------------
# the corpus itself: each expected cost follows from the counts and prices

{
    my @bad;
    for my $f (@FX) {
        my $e = $f->{expect};
        my $price = price_lookup($PRICES, $e->{upstream_model}, $f->{provider}, $f->{model});
        my $want = $price ? pico_to_usd(cost_pico($price, $e)) : '-';
        push @bad, "$f->{name}: cost $e->{cost}, the prices give $want" if $e->{cost} ne $want;
        push @bad, "$f->{name}: cache_read > input"
            if Math::BigInt->new("$e->{cache_read}") > Math::BigInt->new("$e->{input}");
        push @bad, "$f->{name}: reasoning > output"
            if Math::BigInt->new("$e->{reasoning}") > Math::BigInt->new("$e->{output}");
        push @bad, "$f->{name}: format/usage_source" unless $f->{format} =~ /^(openai|anthropic|gemini)$/
            && $e->{usage_source} =~ /^(provider|estimated|none)$/;
    }
    ok(!@bad, 'fixtures: every expected cost follows from the counts and the price files') or diag(join "\n", @bad);
}

# ---------------------------------------------------------------------------
# which formats does this build have?

my $t = LLMTest->new(error_level => 'info');
my %HAVE = (openai => 1);
for my $fmt (qw(anthropic gemini)) {
    my ($rc) = $t->nginx_t(<<"CONF", name => "have-$fmt.conf");
http {
    llm_provider p { format $fmt; url http://127.0.0.1:9/v1; key k; }
    server { listen 127.0.0.1:%%PORT_PROBE%%; location / { llm_pass p; } }
}
CONF
    $HAVE{$fmt} = $rc == 0;
    diag("format $fmt is not in this build: its fixtures are TODO") unless $HAVE{$fmt};
}

# ---------------------------------------------------------------------------
# the raw provider: X-Fixture names the fixture, X-Split how to send it

my %REASON = (200 => 'OK');

sub cut_points_in_usage {
    my ($body, $offset) = @_;
    my @at;
    while ($body =~ /"usage(?:Metadata)?"\s*:\s*\{/g) {
        my $s = $-[0];
        push @at, $s + 3, $+[0] - 1, $+[0];
        my $region = substr($body, $s, 260);
        while ($region =~ /(\d{2,})/g) {
            push @at, $s + $-[1] + int(length($1) / 2);
        }
    }
    return map { $_ + $offset } @at;
}

sub cut {
    my ($s, @at) = @_;
    my (@p, $prev);
    $prev = 0;
    for my $o (sort { $a <=> $b } grep { $_ > 0 && $_ < length $s } @at) {
        next if $o == $prev;
        push @p, substr($s, $prev, $o - $prev);
        $prev = $o;
    }
    push @p, substr($s, $prev);
    return @p;
}

sub chunk { sprintf("%x\r\n", length $_[0]) . $_[0] . "\r\n" }

# the provider's reply: (list of writes, delay between writes)
sub reply_writes {
    my ($f, $split) = @_;
    my $body = $f->{response};
    my $head = "HTTP/1.1 200 OK\r\nContent-Type: $f->{content_type}\r\n"
             . "x-request-id: req_$f->{name}\r\n";
    if (!$f->{stream} || $f->{content_type} !~ /event-stream/ && !$f->{truncate}) {
        if ($f->{stream}) {
            # a JSON-array stream (Gemini without alt=sse): chunked, as Gemini sends it
            $head .= "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            my @pieces = $split eq 'inside-usage' ? cut($body, cut_points_in_usage($body, 0))
                                                   : ($body =~ /(.{1,700})/gs);
            my $wire = $head . join('', map { chunk($_) } @pieces) . "0\r\n\r\n";
            return ([ split //, $wire ], 0.0002) if $split eq 'every-byte';
            return ([ $head, map({ chunk($_) } @pieces), "0\r\n\r\n" ], 0.005);
        }
        $head .= "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n";
        my $wire = $head . $body;
        return ([ split //, $wire ], 0.0002) if $split eq 'every-byte';
        return ([ cut($wire, cut_points_in_usage($body, length $head)) ], 0.005) if $split eq 'inside-usage';
        return ([ $wire ], 0);
    }
    # SSE: chunked, a chunk per event (or per piece)
    $head .= "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    my @events = $body =~ /(.*?(?:\r\n\r\n|\n\n)|.+\z)/gs;
    my $end = $f->{truncate} ? '' : "0\r\n\r\n";
    if ($split eq 'inside-usage') {
        my @pieces = cut($body, cut_points_in_usage($body, 0));
        return ([ $head, (map { chunk($_) } @pieces), ($end ne '' ? $end : ()) ], 0.005);
    }
    my $wire = $head . join('', map { chunk($_) } @events) . $end;
    return ([ split //, $wire ], 0.0002) if $split eq 'every-byte';
    return ([ $head, map({ chunk($_) } @events), ($end ne '' ? $end : ()) ], 0.002);
}

my %BY_BODY;
$BY_BODY{$_->{request_body}} //= $_ for @FX;

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $name = $req->{headers}{'x-fixture'} // '';
    my $f = $FX{$name} // $BY_BODY{$req->{body}};
    return [ [ send => LLMTest::FakeProvider::http_response(status => 500,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => '{"error":{"message":"no fixture","type":"test"}}') ] ] unless $f;
    my ($writes, $delay) = reply_writes($f, $req->{headers}{'x-split'} // 'whole');
    return [ [ pieces => $writes, $delay ], ($f->{truncate} ? [ sleep => 0.05 ] : ()), [ 'close' ] ];
});

my @LOG_FIELDS = qw(run status provider route model upstream_model stream input cache_read cache_write
                    output reasoning total usage_source cost upstream_status error llm_request_id
                    request_id ttft);

my $conf = <<'CONF';
http {
    log_format usage '$http_x_run|$status|$llm_provider|$llm_route|$llm_model|$llm_upstream_model|$llm_stream|$llm_input_tokens|$llm_cache_read_tokens|$llm_cache_write_tokens|$llm_output_tokens|$llm_reasoning_tokens|$llm_total_tokens|$llm_usage_source|$llm_cost|$llm_upstream_status|$llm_error|$llm_request_id|$request_id|$llm_ttft';
    log_format usage_json escape=json '{"run":"$http_x_run","cost":"$llm_cost","source":"$llm_usage_source","input":"$llm_input_tokens"}';

    include %%FIX%%/usage-prices.conf;
    llm_prices %%FIX%%/usage-prices.json;
    llm_zone usage 1m;

    llm_provider openai   { url http://127.0.0.1:%%PORT_RAW%%/v1; key sk-test-openai; }
    llm_provider deepseek { url http://127.0.0.1:%%PORT_RAW%%/v1; key sk-test-deepseek; }
    llm_provider nousage  { url http://127.0.0.1:%%PORT_RAW%%/v1; key sk-test-nousage; stream_usage off; }
    llm_provider acme {
        url http://127.0.0.1:%%PORT_RAW%%/v1;
        key sk-test-acme;
        model fast gpt-4o-mini;
        model g41 gpt-4.1;
        model hm2 house-model-v2;
        model house house-model-v1;
        model nowhere mystery-model;
        model img dall-e-3;
        model half mystery-only-input;
        model tiny tiny-price-model;
    }
%%ANTHROPIC%%
%%GEMINI%%
    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/usage.log usage;
        access_log %%DIR%%/usage-json.log usage_json;
        location /openai/v1/   { llm_pass openai; }
        location /deepseek/v1/ { llm_pass deepseek; }
        location /nousage/v1/  { llm_pass nousage; }
        location /acme/v1/     { llm_pass acme; }
        location /anthropic/v1/ { %%ANTHROPIC_PASS%% }
        location /gemini/v1beta/ { %%GEMINI_PASS%% }
        location = /status { access_log off; llm_status; }
        location = /plain  { return 200 "not an llm request\n"; }
    }
}
CONF
$conf =~ s/%%FIX%%/$FIX/g;
$conf =~ s/%%ANTHROPIC%%/$HAVE{anthropic}
    ? '    llm_provider anthropic { format anthropic; url http:\/\/127.0.0.1:%%PORT_RAW%%\/v1; key sk-ant-test; }' : ''/e;
$conf =~ s/%%GEMINI%%/$HAVE{gemini}
    ? '    llm_provider gemini { format gemini; url http:\/\/127.0.0.1:%%PORT_RAW%%\/v1beta; key gemini-test-key; }' : ''/e;
$conf =~ s/%%ANTHROPIC_PASS%%/$HAVE{anthropic} ? 'llm_pass anthropic;' : 'return 404;'/e;
$conf =~ s/%%GEMINI_PASS%%/$HAVE{gemini} ? 'llm_pass gemini;' : 'return 404;'/e;

$t->run($conf);
my $gw = $t->port('GW');

# ---------------------------------------------------------------------------

sub client_path {
    my ($f) = @_;
    return "/$f->{provider}/v1/messages" if $f->{endpoint} eq 'messages';
    return "/$f->{provider}/v1beta/models/$f->{model}:$f->{endpoint}" . ($f->{query} ? "?$f->{query}" : '')
        if $f->{endpoint} =~ /GenerateContent|generateContent/;
    return "/$f->{provider}/v1/" . ($f->{endpoint} eq 'embeddings' ? 'embeddings' : 'chat/completions');
}

sub provider_path {
    my ($f) = @_;
    return '/v1/messages' if $f->{endpoint} eq 'messages';
    return "/v1beta/models/$f->{expect}{upstream_model}:$f->{endpoint}" . ($f->{query} ? "?$f->{query}" : '')
        if $f->{endpoint} =~ /enerateContent/;
    return '/v1/' . ($f->{endpoint} eq 'embeddings' ? 'embeddings' : 'chat/completions');
}

sub log_line {
    my ($file, $run) = @_;
    return wait_for(sub { (grep { index($_, "$run|") == 0 || index($_, "{\"run\":\"$run\"") == 0 }
                           $t->access_log($file))[0] }, 5);
}

sub canon { json_encode(json_decode($_[0])) }

sub diff_at {
    my ($got, $want) = @_;
    my $i = 0;
    $i++ while $i < length $got && $i < length $want && substr($got, $i, 1) eq substr($want, $i, 1);
    return sprintf "got %d bytes, expected %d; first difference at byte %d:\n got: %s\nwant: %s",
        length $got, length $want, $i, json_encode(substr($got, $i > 30 ? $i - 30 : 0, 90)),
        json_encode(substr($want, $i > 30 ? $i - 30 : 0, 90));
}

my (%runs_of, @warn_runs);

sub run_fixture {
    my ($f, $split) = @_;
    my $run = "$f->{name}/$split";
    my $e = $f->{expect};
    $raw->reset_log;
    my $r = http_request(port => $gw, method => 'POST', path => client_path($f), timeout => 15,
                         headers => [ 'Content-Type' => 'application/json', 'X-Fixture' => $f->{name},
                                      'X-Split' => $split, 'X-Run' => $run ],
                         body => $f->{request_body});
    push @{$runs_of{$f->{name}}}, $run;
    push @warn_runs, $run if $f->{warn};

    # what the client got
    is($r->{status}, 200, "$run: 200") or diag($r->{error} // substr($r->{body}, 0, 300));
    my $want = $f->{client_response} // $f->{response};
    my $stripped = $f->{provider_request} eq 'include_usage_injected';
    ok($r->{body} eq $want, "$run: the client received " .
       (!defined $f->{client_response} ? 'exactly the provider\'s bytes'
        : $stripped ? 'the chunks without the usage the gateway asked for'
        : 'the provider\'s bytes, then an error event'))
        or diag(diff_at($r->{body}, $want));
    if ($f->{truncate}) {
        ok(!$r->{complete}, "$run: the client's response is cut short too (not properly terminated)");
    } else {
        ok($r->{complete}, "$run: response properly terminated") or diag($r->{error} // '');
    }
    if (defined $f->{client_response} && $stripped) {
        my @p = LLMTest::HTTP::parse_sse_events($r->{body});
        my @usage = grep { my $j = json_decode($_); ref $j eq 'HASH' && exists $j->{usage} } @p;
        is(scalar @usage, 0, "$run: no chunk the client got has a \"usage\" member");
    }

    # what the provider got
    my @req = grep { ($_->{headers}{'x-run'} // '') eq $run } $raw->requests;
    is(scalar @req, 1, "$run: one provider request");
    if (my $pr = $req[0]) {
        is($pr->{path}, provider_path($f), "$run: provider request path");
        my $mode = $f->{provider_request};
        if ($mode eq 'identical') {
            ok($pr->{body} eq $f->{request_body}, "$run: provider got the client's body unchanged")
                or diag(diff_at($pr->{body}, $f->{request_body}));
        } elsif ($mode eq 'include_usage_injected') {
            my $want = json_decode($f->{request_body});
            $want->{stream_options} = { %{ref $want->{stream_options} eq 'HASH' ? $want->{stream_options} : {}},
                                        include_usage => JSON::PP::true };
            is(canon($pr->{body}), json_encode($want),
               "$run: provider got the client's body with stream_options.include_usage=true");
        } elsif ($mode eq 'model_mapped') {
            my $want = json_decode($f->{request_body});
            $want->{model} = $e->{upstream_model};
            is(canon($pr->{body}), json_encode($want), "$run: provider got the body with the upstream model");
        }
    }

    # the access log
    my $line = log_line('usage.log', $run);
    ok($line, "$run: access log line") or return;
    my ($l) = parse_log(\@LOG_FIELDS, $line);
    my %got = map { $_ => $l->{$_} } COUNTERS, 'usage_source', 'cost';
    my %exp = map { $_ => "$e->{$_}" } COUNTERS, 'usage_source', 'cost';
    is_deeply(\%got, \%exp, "$run: counts, \$llm_usage_source $e->{usage_source}, \$llm_cost $e->{cost}")
        or diag("log: $line");
    is($l->{total}, '' . (Math::BigInt->new("$e->{input}") + Math::BigInt->new("$e->{output}")),
       "$run: \$llm_total_tokens = input + output");
    is("$l->{provider}|$l->{model}|$l->{upstream_model}", "$f->{provider}|$f->{model}|$e->{upstream_model}",
       "$run: \$llm_provider, \$llm_model, \$llm_upstream_model");
    is($l->{stream}, $f->{stream} ? '1' : '0', "$run: \$llm_stream") unless $f->{endpoint} eq 'embeddings';
    is($l->{upstream_status}, '200', "$run: \$llm_upstream_status 200");
    ok($l->{llm_request_id} eq $l->{request_id} && $l->{request_id} =~ /^[0-9a-f]{32}$/,
       "$run: \$llm_request_id = \$request_id") or diag($line);
    like($l->{ttft}, qr/^\d+$/, "$run: \$llm_ttft is a number of ms");
    return $l;
}

for my $f (@FX) {
    local $TODO = $HAVE{$f->{format}} ? undef : "format $f->{format} is not in this build";
    my @splits = ('whole', $f->{once} ? () : @{$f->{splits}});
    run_fixture($f, $_) for @splits;
}

# ---------------------------------------------------------------------------
# a request that never reached llm_pass: every $llm_* variable is "-"

{
    my $r = http_request(port => $gw, method => 'GET', path => '/plain', headers => [ 'X-Run' => 'plain-location' ]);
    is($r->{status}, 200, 'a location without llm_pass: 200');
    my $line = log_line('usage.log', 'plain-location') // '';
    my ($l) = parse_log(\@LOG_FIELDS, $line);
    my @not = grep { $_ ne 'run' && $_ ne 'status' && $_ ne 'request_id' && ($l->{$_} // '') ne '-' } @LOG_FIELDS;
    ok($line && !@not, 'a location without llm_pass: every $llm_* variable is "-" in the log') or diag($line);
}

# ---------------------------------------------------------------------------
# escape=json: an unpriced cost is "" (not "-")

{
    my @j = map { json_decode($_) } $t->access_log('usage-json.log');
    my %by = map { $_->{run} => $_ } grep { ref } @j;
    for my $name (qw(lookup-nowhere lookup-img openai-chat-max-counter openai-chat-plain)) {
        my $j = $by{"$name/whole"};
        ok($j, "escape=json log: a JSON line for $name") or next;
        my $want = $FX{$name}{expect}{cost} eq '-' ? '' : $FX{$name}{expect}{cost};
        is($j->{cost}, $want, "escape=json log: $name \$llm_cost is \"$want\"");
    }
}

# a warning for each untrusted usage object
{
    my @w = grep { /usage object.*not trusted|not non-negative integers/ } split /\n/, $t->error_log;
    cmp_ok(scalar @w, '>=', scalar @warn_runs,
           'a warning is logged for every reply with an untrusted usage object (' . scalar(@warn_runs) . ' replies)')
        or diag(scalar(@w) . " warnings");
}

# ---------------------------------------------------------------------------
# the status page: totals and per-model figures are the sums of the log

{
    # (the request to /plain is not an llm request: the zone does not count it)
    my @lines = grep { $_->{run} ne 'plain-location' } parse_log(\@LOG_FIELDS, $t->access_log('usage.log'));
    my ($r, $st) = status_json($gw, '/status');
    is($r->{status}, 200, 'llm_status: 200');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'llm_status: application/json');
    ok(ref $st eq 'HASH', 'llm_status: JSON') or diag(substr($r->{body}, 0, 300));
    $st //= {};

    my $sum = sub {
        my (@ls) = @_;
        my %s = (requests => scalar @ls, cost => Math::BigInt->new(0), unpriced => 0);
        for my $l (@ls) {
            $s{tokens}{$_} += 0 for COUNTERS;
            $s{tokens}{$_} = Math::BigInt->new($s{tokens}{$_}) + Math::BigInt->new($l->{$_}) for COUNTERS;
            $s{usage_source}{$l->{usage_source}}++;
            if ($l->{cost} eq '-') { $s{unpriced}++ if $l->{usage_source} ne 'none' }
            else { $s{cost} += usd_to_pico($l->{cost}) }
        }
        return \%s;
    };
    my $cmp = sub {
        my ($name, $got, $want) = @_;
        $got //= {};
        my %g = (requests => $got->{requests} // 'missing', unpriced => $got->{unpriced} // 'missing',
                 cost => defined $got->{cost} ? pico_to_usd(usd_to_pico("$got->{cost}")) : 'missing',
                 map({ ("tokens.$_" => defined $got->{tokens}{$_} ? "$got->{tokens}{$_}" : 'missing') } COUNTERS),
                 map({ ("usage_source.$_" => $got->{usage_source}{$_} // 'missing') } qw(provider estimated none)));
        my %w = (requests => $want->{requests}, unpriced => $want->{unpriced}, cost => pico_to_usd($want->{cost}),
                 map({ ("tokens.$_" => '' . ($want->{tokens}{$_} // 0)) } COUNTERS),
                 map({ ("usage_source.$_" => $want->{usage_source}{$_} // 0) } qw(provider estimated none)));
        is_deeply(\%g, \%w, "llm_status $name: requests, tokens, cost, unpriced, usage_source = sums over the access log");
    };
    $cmp->('total', $st->{total}, $sum->(@lines));
    my ($lit) = $r->{body} =~ /"total":\{.*?"cost":([^,}]*)/s;
    is($lit, pico_to_usd($sum->(@lines)->{cost}),
       'llm_status: total.cost is printed as an exact decimal literal in $llm_cost\'s format');
    for my $m ('gpt-4o', 'mystery-model', 'deepseek-chat', 'gpt-4o-mini') {
        $cmp->("models.$m", $st->{models}{$m}, $sum->(grep { $_->{upstream_model} eq $m } @lines));
    }
    for my $p (qw(openai deepseek acme), grep { $HAVE{$_} } qw(anthropic gemini)) {
        $cmp->("providers.$p", $st->{providers}{$p}, $sum->(grep { $_->{provider} eq $p } @lines));
    }

    # a stream that ended before the provider's final usage is estimated and
    # counted as incomplete, whatever its format
    my $incomplete = sub { scalar grep { $_->{stream} eq '1' && $_->{usage_source} eq 'estimated' } @_ };
    my @cut = map { @{$runs_of{$_->{name}} // []} } grep { $_->{stream} && $_->{expect}{usage_source} eq 'estimated' } @FX;
    is($st->{total}{incomplete_streams}, $incomplete->(@lines),
       'llm_status: total.incomplete_streams = the streams logged as estimated (' . scalar(@cut) . ' runs of cut or unfinished streams)');
    for my $p (qw(openai), grep { $HAVE{$_} } qw(anthropic gemini)) {
        my @pl = grep { $_->{provider} eq $p } @lines;
        cmp_ok($incomplete->(@pl), '>', 0, "providers.$p: some streams ended before the provider's final usage");
        is($st->{providers}{$p}{incomplete_streams}, $incomplete->(@pl),
           "llm_status: providers.$p.incomplete_streams = its streams logged as estimated");
    }
    is($st->{models}{'mystery-model'}{unpriced}, scalar @{$runs_of{'lookup-nowhere'}},
       'llm_status: the unpriced model is counted under "unpriced"');
    is(pico_to_usd(usd_to_pico("$st->{models}{'mystery-model'}{cost}")), '0', 'llm_status: the unpriced model costs 0');
}

$t->allow_error(qr/upstream prematurely closed/);
$t->finish;
done_testing;
