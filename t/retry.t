#!/usr/bin/perl
# Retries and failover policy: 529, error types read from the provider's
# error body, context fallbacks (on a context error, or when the request is
# estimated too large for a model), repeats of a provider with a backoff
# (and Retry-After, quota, 4xx, breaker and time budget limits), the
# first_byte_timeout of streams, resets and 5xx.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use Time::HiRes qw(time sleep);

my $t = LLMTest->new;

# ---------------------------------------------------------------------------
# provider error bodies

my %E = (
    # the type only in error.code, a message without the telltale phrases
    ctx        => '{"error":{"message":"Too many tokens in the request.","type":"invalid_request_error",'
                . '"param":"messages","code":"context_length_exceeded"}}',
    # OpenAI wording without a code
    ctx_openai => q({"error":{"message":"This model's maximum context length is 8192 tokens. However, )
                . q(your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages",)
                . q("code":null}}),
    # Anthropic wording
    ctx_anth   => '{"type":"error","error":{"type":"invalid_request_error",'
                . '"message":"prompt is too long: 210311 tokens > 200000 maximum"}}',
    # Gemini wording
    ctx_gem    => '{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number '
                . 'of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}',
    quota      => '{"error":{"message":"You exceeded your current quota, please check your plan and billing '
                . 'details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}',
    # the type only in error.status, in another case
    quota_case => '{"error":{"code":429,"message":"Quota exceeded.","status":"Insufficient_Quota"}}',
    rate       => '{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): '
                . 'Limit 3, Used 3.","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
    overloaded => '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
    busy       => '{"error":{"message":"The server is busy.","type":"server_error","param":null,"code":null}}',
);

my $COMPLETION = '{"id":"chatcmpl-fake","object":"chat.completion","created":1,"model":"fake-model",'
               . '"choices":[{"index":0,"message":{"role":"assistant","content":"fake answer"},'
               . '"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}';

my @EVENTS = map { 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"fake-model",'
                   . qq("choices":[{"index":0,"delta":{"content":"fake part $_"},"finish_reason":null}]}\n\n) }
             1 .. 2;

sub chunk { sprintf("%x\r\n", length $_[0]) . $_[0] . "\r\n" }

sub response {
    my ($status, $body, %a) = @_;
    return LLMTest::FakeProvider::http_response(
        status => $status, body => $body, framing => $a{framing} // 'length', chunks => $a{chunks},
        headers => [ 'Content-Type' => 'application/json', @{$a{headers} // []} ]);
}

# the wire bytes of a chunked error reply in two chunks, the boundary in the
# middle of WORD, written in pieces (50 ms apart) cut in the header, inside
# WORD's first half, between the CR and LF of the second chunk's size line,
# and inside the last chunk
sub awkward_pieces {
    my ($status, $body, $word) = @_;
    my $w = index($body, $word);
    die "no '$word' in the body" if $w < 0;
    my $cut = $w + int(length($word) / 2);
    my $wire = response($status, $body, framing => 'chunked',
                        chunks => [ substr($body, 0, $cut), substr($body, $cut) ]);
    my $head = index($wire, "\r\n\r\n") + 4;
    my $inword = index($wire, substr($word, 0, int(length($word) / 2))) + 3;
    my $size2 = index($wire, "\r\n", $head + length chunk(substr($body, 0, $cut))) + 1;
    my @at = sort { $a <=> $b } ($head - 7, $inword, $size2, length($wire) - 3);
    my ($prev, @pieces) = (0);
    for my $p (@at) { push @pieces, substr($wire, $prev, $p - $prev); $prev = $p }
    push @pieces, substr($wire, $prev);
    die "pieces do not add up" unless join('', @pieces) eq $wire;
    return [ [ pieces => \@pieces, 0.05 ] ];
}

my $SSE_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             . "X-Fake: stalled\r\n";

# how many requests of scenario $s the fake has had (this one included)
my $FAKE_DIR = $t->dir . '/fake-' . $t->port('FAKE');
sub seen {
    my ($s) = @_;
    opendir my $dh, $FAKE_DIR or return 0;
    my $n = 0;
    for my $f (grep { /^req-/ } readdir $dh) {
        open my $fh, '<', "$FAKE_DIR/$f" or next;
        local $/;
        my $raw = <$fh> // '';
        $n++ if $raw =~ /^X-Scenario: \Q$s\E\r?$/mi;
    }
    return $n;
}

# the fake provider's answers, by the X-Scenario header its provider adds
my %script = (
    ctx        => sub { [ [ send => response(400, $E{ctx}) ] ] },
    ctx_openai => sub { [ [ send => response(400, $E{ctx_openai}) ] ] },
    ctx_anth   => sub { [ [ send => response(400, $E{ctx_anth}) ] ] },
    ctx_gem    => sub { [ [ send => response(400, $E{ctx_gem}) ] ] },
    ctx_text   => sub { [ [ send => LLMTest::FakeProvider::http_response(status => 400,
                              headers => [ 'Content-Type' => 'text/plain' ],
                              body => "Error: prompt is too long for this model\n") ] ] },
    quota      => sub { [ [ send => response(429, $E{quota}) ] ] },
    quota_case => sub { [ [ send => response(429, $E{quota_case}) ] ] },
    quota_ch   => sub { awkward_pieces(429, $E{quota}, 'insufficient_quota') },
    rate       => sub { [ [ send => response(429, $E{rate}) ] ] },
    rate_ch    => sub { awkward_pieces(429, $E{rate}, 'rate_limit_exceeded') },
    overloaded => sub { [ [ send => response(529, $E{overloaded}) ] ] },
    over400    => sub { [ [ send => response(400, $E{overloaded}) ] ] },
    ctx_rep    => sub { [ [ send => response(400, $E{ctx}) ] ] },
    quota_rep  => sub { [ [ send => response(429, $E{quota}) ] ] },
    budget     => sub { [ [ send => response(503, $E{busy}) ] ] },
    # 503, 503, then an answer
    flaky      => sub { [ [ send => seen('flaky') < 3 ? response(503, $E{busy}) : response(200, $COMPLETION) ] ] },
    # 429 with Retry-After: 1, then an answer
    ra         => sub { [ [ send => seen('ra') < 2 ? response(429, $E{rate}, headers => [ 'Retry-After' => 1 ])
                                                   : response(200, $COMPLETION) ] ] },
    # 529 with Retry-After: 1, then an answer
    ra529      => sub { [ [ send => seen('ra529') < 2 ? response(529, $E{busy}, headers => [ 'Retry-After' => 1 ])
                                                      : response(200, $COMPLETION) ] ] },
    # 529 overloaded_error, then an answer
    over_rep   => sub { [ [ send => seen('over_rep') < 2 ? response(529, $E{overloaded})
                                                         : response(200, $COMPLETION) ] ] },
    reset      => sub { [ [ 'reset' ] ] },
    stall0     => sub { [ [ stall => 3 ] ] },
    stall_ch   => sub { [ [ send => $SSE_HEAD . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" ],
                          [ stall => 3 ] ] },
    stall_cl   => sub { [ [ send => $SSE_HEAD . "Connection: close\r\n\r\n" ], [ stall => 3 ] ] },
    # the first byte in time, then a pause longer than first_byte_timeout
    slow_rest  => sub { [ [ send => $SSE_HEAD . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                    . chunk($EVENTS[0]) ],
                          [ sleep => 1 ],
                          [ send => chunk($EVENTS[1]) . chunk("data: [DONE]\n\n") . "0\r\n\r\n" ] ] },
);

my $fake = $t->fake_provider(port => $t->port('FAKE'), handler => sub {
    my ($req) = @_;
    my $s = $req->{headers}{'x-scenario'} // '';
    return $script{$s} ? $script{$s}->() : [ [ send => response(500, '{"error":"no script"}') ] ];
});

my $conf = <<'CONF';
http {
    llm_zone llm 1m;

    log_format llm '$http_x_test_id|$llm_provider|$llm_attempts|$llm_failover|$status|$llm_error';

    llm_price small-model input=1 output=1 max_input=100;
    llm_price small2/tiny-model input=1 output=1 max_input=100;
    llm_price client-model input=1 output=1 max_input=100;

    # the built-in mock
    llm_provider good    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }
    llm_provider over    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 529; }
    llm_provider m500    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 500; }
    llm_provider m502    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 502; }
    llm_provider m504    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 504; }
    llm_provider down1   { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503; }
    llm_provider down2   { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503; }
    llm_provider small   { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini small-model; }
    llm_provider small2  { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model gpt-4o-mini tiny-model; }
    llm_provider small3  { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; model client-model unpriced-model; }
    llm_provider large   { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k;
                           model gpt-4o-mini big-model; model client-model big-model; }
    llm_provider slowmock { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Delay 1000;
                            first_byte_timeout 300ms; read_timeout 5s; }
    llm_provider brk     { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 529;
                           breaker failures=1 cooldown=30s; }
    llm_provider brk2    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 503;
                           breaker failures=1 cooldown=30s; }
    llm_provider brk3    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 529;
                           breaker failures=1 cooldown=30s; }
    llm_provider kept    { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; read_timeout 1s; }

    # the scripted fake provider
    llm_provider ctx        { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx; }
    llm_provider ctx_openai { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx_openai; }
    llm_provider ctx_anth   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx_anth; }
    llm_provider ctx_gem    { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx_gem; }
    llm_provider ctx_text   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx_text; }
    llm_provider quota      { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario quota; }
    llm_provider quota_case { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario quota_case; }
    llm_provider quota_ch   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario quota_ch; }
    llm_provider rate       { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario rate; }
    llm_provider rate_ch    { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario rate_ch; }
    llm_provider overloaded { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario overloaded; }
    llm_provider over400    { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario over400; }
    llm_provider over_rep   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario over_rep; }
    llm_provider ctx_rep    { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ctx_rep; }
    llm_provider quota_rep  { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario quota_rep; }
    llm_provider budget     { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario budget; }
    llm_provider flaky      { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario flaky; }
    llm_provider ra         { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ra; }
    llm_provider ra529      { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario ra529; }
    llm_provider reset      { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario reset; }
    llm_provider stall0     { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario stall0;
                              read_timeout 10s; first_byte_timeout 500ms; }
    llm_provider stall_ch   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario stall_ch;
                              read_timeout 10s; first_byte_timeout 500ms; }
    llm_provider stall_cl   { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario stall_cl;
                              read_timeout 10s; first_byte_timeout 500ms; }
    llm_provider slow_rest  { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; header X-Scenario slow_rest;
                              read_timeout 10s; first_byte_timeout 500ms; }

    # 529
    llm_route r529      { provider over; fallback good; }
    llm_route r529off   { provider over; fallback good; retry error timeout 503; }

    # error types
    llm_route ctxtype   { provider ctx; fallback good; retry error context_length_exceeded; }
    llm_route ctxdef    { provider ctx; fallback good; }
    llm_route ctxone    { provider ctx; retry context_length_exceeded; }
    llm_route ctxopenai { provider ctx_openai; fallback good; retry context_length_exceeded; }
    llm_route ctxanth   { provider ctx_anth; fallback good; retry context_length_exceeded; }
    llm_route ctxgem    { provider ctx_gem; fallback good; retry context_length_exceeded; }
    llm_route ctxtext   { provider ctx_text; fallback good; retry context_length_exceeded; }
    llm_route quota     { provider quota; fallback good; retry error insufficient_quota; }
    llm_route quotacase { provider quota_case; fallback good; retry error insufficient_quota; }
    llm_route quotach   { provider quota_ch; fallback good; retry error insufficient_quota; }
    llm_route rate      { provider rate; fallback good; retry error insufficient_quota; }
    llm_route ratech    { provider rate_ch; fallback good; retry error insufficient_quota; }
    llm_route overl     { provider overloaded; fallback good; retry error overloaded_error; }

    # context fallbacks
    llm_route ctxfb     { provider ctx; fallback good; context_fallback large; }
    llm_route ctxoff    { provider ctx; context_fallback large; retry off; }
    llm_route est       { provider small; context_fallback large; }
    llm_route est2      { provider small2; context_fallback large; }
    llm_route est3      { provider small3; context_fallback large; }

    # repeats
    llm_route flaky     { provider flaky; retry 503 tries=3 backoff=200ms; }
    llm_route order     { provider down1; fallback down2; retry 503 tries=4 backoff=50ms; }
    llm_route ra        { provider ra; retry 429 tries=2 backoff=50ms; }
    llm_route ra529     { provider ra529; retry 529 tries=2 backoff=50ms; }
    llm_route overrep   { provider over_rep; retry overloaded_error tries=2 backoff=50ms; }
    llm_route quotarep  { provider quota_rep; retry 429 tries=3 backoff=10ms; }
    llm_route ctxrep    { provider ctx_rep; retry context_length_exceeded tries=3 backoff=10ms; }
    llm_route over400   { provider over400; retry overloaded_error tries=3 backoff=10ms; }
    llm_route budget    { provider budget; retry 503 tries=3 backoff=1s timeout=500ms; }
    llm_route brk       { provider brk; }
    llm_route brkrep    { provider brk2; retry 503 tries=3 backoff=10ms; }
    llm_route brkrep529 { provider brk3; retry 529 tries=3 backoff=10ms; }

    # first_byte_timeout, resets, 5xx
    llm_route stall0    { provider stall0; fallback good; }
    llm_route stallch   { provider stall_ch; fallback good; }
    llm_route stallcl   { provider stall_cl; fallback good; }
    llm_route slowrest  { provider slow_rest; fallback good; }
    llm_route slowmock  { provider slowmock; fallback good; }
    llm_route kept      { provider kept; fallback good; }
    llm_route reset     { provider reset; fallback good; }
    llm_route r500      { provider m500; fallback good; }
    llm_route r502      { provider m502; fallback good; }
    llm_route r504      { provider m504; fallback good; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        llm_attempts_header on;
        location = /status { llm_status; }
%%LOCATIONS%%
    }
}
CONF

my $locations = join '', map { "        location /$_/v1/ { llm_pass $_; }\n" } $conf =~ /^\s*llm_route\s+(\w+)/mg;
$conf =~ s/%%LOCATIONS%%\n/$locations/;

$t->run($conf);

my $gw   = $t->port('GW');
my $msgs = [ { role => 'user', content => 'Hello' } ];
my $TRUE = JSON::PP::true;

# chat(ROUTE, ID, stream => 1, content => TEXT, model => NAME)
sub chat {
    my ($route, $id, %a) = @_;
    my $body = { model => $a{model} // 'gpt-4o-mini',
                 messages => $a{content} ? [ { role => 'user', content => $a{content} } ] : $msgs,
                 ($a{stream} ? (stream => $TRUE) : ()) };
    return http_request(port => $gw, method => 'POST', path => "/$route/v1/chat/completions",
                        headers => [ 'X-Test-Id' => $id ], body => $body, timeout => 15);
}

sub log_line {
    my ($id) = @_;
    my $l = wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5);
    return $l // '';
}

sub status { json_decode(http_request(port => $gw, path => '/status')->{body}) // {} }

sub attempts { $_[0]{headers}{'x-llm-attempts'} // '' }

# arrival times of the fake's requests of a scenario, in order
sub arrivals {
    my ($s) = @_;
    my %conn = map { $_->{conn} => 1 } grep { ($_->{headers}{'x-scenario'} // '') eq $s } $fake->requests;
    return map { / t=([\d.]+)/ ? $1 : () }
           grep { /^request conn=(\d+) / && $conn{$1} } $fake->events;
}

sub mock_answered {
    my ($r, $name) = @_;
    my $j = json_decode($r->{body}) // {};
    is($j->{choices}[0]{message}{content}, mock_text(), "$name: the body is the mock's answer");
}

# ---------------------------------------------------------------------------
# 529

{
    my $r = chat('r529', 'r529');
    is($r->{status}, 200, '529 is retried by default: the fallback answers');
    is(attempts($r), 'over:529,good:200', '529 by default: X-LLM-Attempts over:529,good:200');
    like(log_line('r529'), qr/^r529\|good\|2\|over:529,good:200\|200\|/,
         '529 by default: $llm_attempts 2, $llm_failover over:529,good:200');

    $r = chat('r529off', 'r529off');
    is($r->{status}, 529, 'a retry line without 529: the 529 goes to the client');
    like($r->{body}, qr/Mock fault: status 529/, 'a retry line without 529: with the provider\'s body');
    like(log_line('r529off'), qr/^r529off\|over\|1\|over:529\|529\|/, 'a retry line without 529: one attempt');
}

# ---------------------------------------------------------------------------
# error types from the error body

{
    my $r = chat('ctxtype', 'ctxtype');
    is($r->{status}, 200, 'retry context_length_exceeded: a 400 with error.code context_length_exceeded is retried');
    is(attempts($r), 'ctx:400,good:200', 'context_length_exceeded: ctx:400,good:200');
    mock_answered($r, 'context_length_exceeded retried');
    like(log_line('ctxtype'), qr/^ctxtype\|good\|2\|ctx:400,good:200\|200\|/, 'context_length_exceeded: logged');

    $r = chat('ctxdef', 'ctxdef');
    is($r->{status}, 400, 'default retry, no context fallback: a context_length_exceeded 400 is not retried');
    is($r->{body}, $E{ctx}, 'not retried: the client gets the provider\'s error body byte for byte');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'not retried: the provider\'s Content-Type');
    like(log_line('ctxdef'), qr/^ctxdef\|ctx\|1\|ctx:400\|400\|/, 'not retried: one attempt logged');

    $r = chat('ctxone', 'ctxone');
    is($r->{status}, 400, 'a single attempt: the context error goes to the client');
    is($r->{body}, $E{ctx}, 'a single attempt: the body byte for byte');
    is(attempts($r), 'ctx:400', 'a single attempt: ctx:400');

    for my $c ([ 'ctxopenai', 'ctx_openai', '"maximum context length" in the message (OpenAI)' ],
               [ 'ctxanth',   'ctx_anth',   '"prompt is too long" in the message (Anthropic)' ],
               [ 'ctxgem',    'ctx_gem',    '"exceeds the maximum number of tokens" in the message (Gemini)' ])
    {
        my ($route, $p, $what) = @$c;
        $r = chat($route, $route);
        is($r->{status}, 200, "$what counts as context_length_exceeded: retried");
        is(attempts($r), "$p:400,good:200", "$what: $p:400,good:200");
    }

    $r = chat('ctxtext', 'ctxtext');
    is($r->{status}, 200, 'a text/plain 400 body saying "prompt is too long" counts as context_length_exceeded');
    is(attempts($r), 'ctx_text:400,good:200', 'text/plain context error: ctx_text:400,good:200');
}

{
    my $r = chat('quota', 'quota');
    is($r->{status}, 200, 'retry error insufficient_quota (no 429): a 429 insufficient_quota is retried');
    is(attempts($r), 'quota:429,good:200', 'insufficient_quota: quota:429,good:200');
    like(log_line('quota'), qr/^quota\|good\|2\|quota:429,good:200\|200\|/, 'insufficient_quota: logged');

    $r = chat('quotacase', 'quotacase');
    is($r->{status}, 200, 'error.status "Insufficient_Quota" (another case) is insufficient_quota: retried');
    is(attempts($r), 'quota_case:429,good:200', 'error.status in another case: quota_case:429,good:200');

    $r = chat('quotach', 'quotach');
    is($r->{status}, 200, 'a chunked insufficient_quota body, in pieces cut inside the type: retried');
    is(attempts($r), 'quota_ch:429,good:200', 'chunked insufficient_quota: quota_ch:429,good:200');
    mock_answered($r, 'chunked insufficient_quota retried');

    $r = chat('rate', 'rate');
    is($r->{status}, 429, 'retry error insufficient_quota: a plain 429 (rate limit) is not retried');
    is($r->{body}, $E{rate}, 'plain 429: the client gets the provider\'s body byte for byte');
    like(log_line('rate'), qr/^rate\|rate\|1\|rate:429\|429\|/, 'plain 429: one attempt logged');

    $r = chat('ratech', 'ratech');
    is($r->{status}, 429, 'a plain 429 with a chunked body in awkward pieces: not retried');
    is($r->{body}, $E{rate}, 'chunked plain 429: the client gets the provider\'s body byte for byte');
    ok($r->{complete}, 'chunked plain 429: the response is complete');
    is(attempts($r), 'rate_ch:429', 'chunked plain 429: rate_ch:429');

    $r = chat('overl', 'overl');
    is($r->{status}, 200, 'retry overloaded_error (no 529): a 529 overloaded_error is retried by its type');
    is(attempts($r), 'overloaded:529,good:200', 'overloaded_error: overloaded:529,good:200');
}

# ---------------------------------------------------------------------------
# context fallbacks

{
    my $r = chat('ctxfb', 'ctxfb');
    is($r->{status}, 200, 'a context_length_exceeded goes to the context fallback without a trigger');
    is(attempts($r), 'ctx:400,large:200', 'context fallback: ctx:400,large:200, the regular fallback skipped');
    is((json_decode($r->{body}) // {})->{model}, 'big-model',
       'context fallback: the request was rebuilt with its model name (big-model)');
    like(log_line('ctxfb'), qr/^ctxfb\|large\|2\|ctx:400,large:200\|200\|/, 'context fallback: logged');

    $r = chat('ctxoff', 'ctxoff');
    is($r->{status}, 200, 'retry off: a context_length_exceeded still goes to the context fallback');
    is(attempts($r), 'ctx:400,large:200', 'retry off: ctx:400,large:200');

    $r = chat('est', 'est-small');
    is($r->{status}, 200, 'a small request goes to the regular provider');
    is(attempts($r), 'small:200', 'small request: small:200');
    is((json_decode($r->{body}) // {})->{model}, 'small-model', 'small request: model small-model');

    my $big = 'x' x 1000;
    my $bytes = length json_encode({ model => 'gpt-4o-mini',
                                     messages => [ { role => 'user', content => $big } ] });
    $r = chat('est', 'est-big', content => $big);
    is($r->{status}, 200, 'a request estimated larger than max_input=100 goes straight to the context fallback');
    is(attempts($r), 'large:200', 'estimated too large: large:200 only');
    is((json_decode($r->{body}) // {})->{model}, 'big-model', 'estimated too large: model big-model');
    like(log_line('est-big'), qr/^est-big\|large\|1\|large:200\|200\|/, 'estimated too large: $llm_attempts 1');
    my $tokens = ceil4($bytes);
    like($t->error_log, qr/llm request of about $tokens input tokens is larger than the 100 of provider "small"/,
         "estimated too large: the estimate (ceil($bytes / 4) = $tokens) is logged");

    $r = chat('est2', 'est2-big', content => $big);
    is(attempts($r), 'large:200', 'max_input found as PROVIDER/NAME (small2/tiny-model): large:200');
    $r = chat('est2', 'est2-small');
    is(attempts($r), 'small2:200', 'PROVIDER/NAME: a small request goes to small2');

    $r = chat('est3', 'est3-big', content => $big, model => 'client-model');
    is(attempts($r), 'large:200', 'max_input found by the client\'s model name: large:200');
    $r = chat('est3', 'est3-small', model => 'client-model');
    is(attempts($r), 'small3:200', 'client\'s model name: a small request goes to small3');
}

# ---------------------------------------------------------------------------
# repeats and backoff

{
    my $r = chat('flaky', 'flaky');
    is($r->{status}, 200, 'tries=3 on one provider answering 503, 503, 200: 200');
    is(attempts($r), 'flaky:503,flaky:503,flaky:200', 'repeats: flaky:503,flaky:503,flaky:200');
    like(log_line('flaky'), qr/^flaky\|flaky\|3\|flaky:503,flaky:503,flaky:200\|200\|/, 'repeats: logged');
    my @at = arrivals('flaky');
    is(scalar @at, 3, 'repeats: three requests reached the provider');
    my ($g1, $g2) = @at == 3 ? ($at[1] - $at[0], $at[2] - $at[1]) : (-1, -1);
    cmp_ok($g1, '>=', 0.095, sprintf('backoff=200ms: the 2nd request arrives >= 100ms after the 1st (%.3fs)', $g1));
    cmp_ok($g1, '<', 1.0, 'backoff=200ms: and within 1s');
    cmp_ok($g2, '>=', 0.195, sprintf('the backoff doubles: the 3rd arrives >= 200ms after the 2nd (%.3fs)', $g2));
    cmp_ok($g2, '<', 1.5, 'the 3rd within 1.5s of the 2nd');

    $r = chat('order', 'order');
    is($r->{status}, 503, 'tries=4 over two providers that fail: the last 503');
    is(attempts($r), 'down1:503,down2:503,down1:503,down2:503',
       'more tries than providers: the providers again, in the same order');

    $r = chat('ra', 'ra');
    is($r->{status}, 200, 'a 429 with Retry-After: 1 is tried again: 200');
    is(attempts($r), 'ra:429,ra:200', 'Retry-After: ra:429,ra:200');
    @at = arrivals('ra');
    my $g = @at == 2 ? $at[1] - $at[0] : -1;
    cmp_ok($g, '>=', 0.95, sprintf('Retry-After: 1 beats backoff=50ms: the 2nd request >= 1s later (%.3fs)', $g));
    cmp_ok($g, '<', 3, 'Retry-After: and within 3s');

    $r = chat('ra529', 'ra529');
    is($r->{status}, 200, 'a 529 with Retry-After: 1 is tried again: 200');
    is(attempts($r), 'ra529:529,ra529:200', 'Retry-After on a 529: ra529:529,ra529:200');
    @at = arrivals('ra529');
    $g = @at == 2 ? $at[1] - $at[0] : -1;
    cmp_ok($g, '>=', 0.95, sprintf('Retry-After: 1 on a 529: the 2nd request >= 1s later (%.3fs)', $g));
    cmp_ok($g, '<', 3, 'Retry-After on a 529: and within 3s');

    $r = chat('overrep', 'overrep');
    is($r->{status}, 200, 'a 529 overloaded_error is tried again on the same provider');
    is(attempts($r), 'over_rep:529,over_rep:200', 'overloaded_error repeat: over_rep:529,over_rep:200');

    $r = chat('quotarep', 'quotarep');
    is($r->{status}, 429, 'retry 429 tries=3: a 429 insufficient_quota is not tried again');
    is($r->{body}, $E{quota}, 'insufficient_quota: the client gets its body byte for byte');
    is(attempts($r), 'quota_rep:429', 'insufficient_quota: one attempt');
    is(scalar(arrivals('quota_rep')), 1, 'insufficient_quota: exactly one request reached the provider');

    $r = chat('ctxrep', 'ctxrep');
    is($r->{status}, 400, 'tries=3: a context_length_exceeded is not tried again on the same provider');
    is(scalar(arrivals('ctx_rep')), 1, 'context_length_exceeded: exactly one request reached the provider');

    $r = chat('over400', 'over400');
    is($r->{status}, 400, 'tries=3: a 400 (even overloaded_error, a trigger) is not tried again');
    is($r->{body}, $E{overloaded}, 'the 400: its body byte for byte');
    is(scalar(arrivals('over400')), 1, 'the 400: exactly one request reached the provider');

    my $t0 = time;
    $r = chat('budget', 'budget');
    my $took = time - $t0;
    is($r->{status}, 503, 'backoff=1s beyond timeout=500ms: the client gets the 503');
    is($r->{body}, $E{busy}, 'time budget: the provider\'s 503 body byte for byte');
    is(attempts($r), 'budget:503', 'time budget: one attempt');
    is(scalar(arrivals('budget')), 1, 'time budget: exactly one request reached the provider');
    cmp_ok($took, '<', 1, sprintf('time budget: the 503 comes without waiting (%.3fs)', $took));
    unlike($t->error_log, qr/trying provider "budget"/, 'time budget: no further attempt was started');
}

# ---------------------------------------------------------------------------
# breakers

{
    my $r = chat('brk', 'brk');
    is($r->{status}, 529, 'a provider with breaker failures=1 answers 529');
    is((status()->{breakers}{brk} // {})->{state}, 'open', 'after one 529 its breaker is open');

    $r = chat('brkrep', 'brkrep');
    is($r->{status}, 503, 'breaker failures=1, retry 503 tries=3: the 503');
    is(attempts($r), 'brk2:503', 'a provider whose breaker opened is not tried again');
    like($r->{body}, qr/"message":"Mock fault: status 503"/,
         'breaker opened: the client gets the provider\'s own 503 reply (the last reply)');
    is((status()->{breakers}{brk2} // {})->{state}, 'open', 'brk2: its breaker is open');

    $r = chat('brkrep529', 'brkrep529');
    is($r->{status}, 529, 'breaker failures=1, retry 529 tries=3: the provider\'s 529 is the answer');
    like($r->{body}, qr/"message":"Mock fault: status 529"/, 'breaker opened on a 529: with the provider\'s body');
    is(attempts($r), 'brk3:529', 'breaker opened on a 529: not tried again');
}

# ---------------------------------------------------------------------------
# first_byte_timeout (streams only)

for my $c ([ 'stallch', 'stall_ch', '200 header (chunked), then nothing' ],
           [ 'stallcl', 'stall_cl', '200 header (no length, no chunks), then nothing' ],
           [ 'stall0',  'stall0',   'no header at all' ])
{
    my ($route, $p, $what) = @$c;
    my $t0 = time;
    my $r = chat($route, $route, stream => 1);
    my $took = time - $t0;
    is($r->{status}, 200, "stream, provider sends $what: the next provider answers");
    like($r->{body}, qr/\Adata: .*This is a mock.*data: \[DONE\]\n\n\z/s,
         "$what: the client gets the complete stream of the next provider");
    unlike($r->{body}, qr/fake/, "$what: and nothing of the stalled one");
    ok(!defined $r->{headers}{'x-fake'}, "$what: not even its headers");
    is(attempts($r), "$p:timeout,good:200", "$what: $p:timeout,good:200");
    cmp_ok($took, '>=', 0.45, sprintf('%s: after first_byte_timeout 500ms (%.3fs)', $what, $took));
    cmp_ok($took, '<', 5, "$what: well before read_timeout 10s");
    like(log_line($route), qr/^\Q$route\E\|good\|2\|\Q$p\E:timeout,good:200\|200\|/, "$what: logged");
}

{
    my $t0 = time;
    my $r = chat('slowrest', 'slowrest', stream => 1);
    my $took = time - $t0;
    is($r->{status}, 200, 'stream: first byte in time, then a pause longer than first_byte_timeout: 200');
    is($r->{body}, $EVENTS[0] . $EVENTS[1] . "data: [DONE]\n\n",
       'after the first byte the read_timeout applies: the whole stream of the provider');
    is(attempts($r), 'slow_rest:200', 'first byte in time: slow_rest:200, no failover');
    cmp_ok($took, '>=', 0.95, sprintf('first byte in time: the pause was waited for (%.3fs)', $took));

    $r = chat('slowmock', 'slowmock-stream', stream => 1);
    is($r->{status}, 200, 'a provider 1s late, streamed: first_byte_timeout 300ms applies, the next one answers');
    is(attempts($r), 'slowmock:timeout,good:200', 'streamed: slowmock:timeout,good:200');

    $t0 = time;
    $r = chat('slowmock', 'slowmock');
    $took = time - $t0;
    is($r->{status}, 200, 'the same provider, not streamed: not subject to first_byte_timeout (read_timeout 5s)');
    is(attempts($r), 'slowmock:200', 'not streamed: slowmock:200');
    cmp_ok($took, '>=', 0.95, sprintf('not streamed: the 1s answer was waited for (%.3fs)', $took));

    # the provider connection of that answer is kept alive, and used next
    $r = chat('slowmock', 'slowmock-stream2', stream => 1);
    is($r->{status}, 200, 'streamed again, on the kept-alive provider connection: the next provider answers');
    is(attempts($r), 'slowmock:timeout,good:200',
       'first_byte_timeout on a kept-alive connection: slowmock:timeout,good:200');
}

# a read_timeout on a kept-alive provider connection
{
    my $r = chat('kept', 'kept-1');
    is(attempts($r), 'kept:200', 'a first request leaves a kept-alive connection to the provider');
    $r = http_request(port => $gw, method => 'POST', path => '/kept/v1/chat/completions',
                      headers => [ 'X-Test-Id' => 'kept-2', 'X-Mock-Delay' => 2000 ],
                      body => { model => 'gpt-4o-mini', messages => $msgs }, timeout => 15);
    is($r->{status}, 200, 'the provider then passes read_timeout 1s on that connection: the next one answers');
    is(attempts($r), 'kept:timeout,good:200', 'read_timeout on a kept-alive connection: kept:timeout,good:200');
}

# ---------------------------------------------------------------------------
# resets and 5xx

{
    my $r = chat('reset', 'reset');
    is($r->{status}, 200, 'a provider that resets the connection: the next one answers');
    is(attempts($r), 'reset:error,good:200', 'reset: reset:error,good:200');
    like(log_line('reset'), qr/^reset\|good\|2\|reset:error,good:200\|200\|/, 'reset: logged');

    for my $s (500, 502, 504) {
        $r = chat("r$s", "r$s");
        is($r->{status}, 200, "$s is retried by default: the next provider answers");
        is(attempts($r), "m$s:$s,good:200", "$s: m$s:$s,good:200");
        mock_answered($r, "$s retried");
    }
}

$t->finish;
done_testing;
