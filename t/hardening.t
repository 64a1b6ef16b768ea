#!/usr/bin/perl
# What a crafted client or a crafted provider must not get away with: keys
# that a provider would read otherwise than the gateway, provider headers
# that nginx would obey (X-Accel-*), interim 1xx replies, model names that
# are too long, invalid UTF-8 or forge log lines, a client's Gemini key,
# and headers that must not cross the gateway either way.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(status_json);

my $t = LLMTest->new;

# the forged text below is in the error log, escaped, on the gateway's line
$t->allow_error(qr/llm error 404 unknown_url: .*\\x0a2026/);

my $COMPLETION = '{"id":"c1","object":"chat.completion","created":1,"model":"m",'
    . '"choices":[{"index":0,"message":{"role":"assistant","content":"provider text"},'
    . '"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,'
    . '"total_tokens":18}}';

sub reply {
    my (@headers) = @_;
    return LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json', @headers ],
        body => $COMPLETION);
}

# the fake provider's reply is chosen by the model name of the request
my %script = (
    'accel-redirect' => [ [ send => reply('X-Accel-Redirect' => '/internal/secret.txt',
                                          'Set-Cookie' => 'session=provider') ] ],
    'accel-other'    => [ [ send => reply('X-Accel-Charset' => 'koi8-r',
                                          'X-Accel-Buffering' => 'yes',
                                          'X-Accel-Limit-Rate' => '1',
                                          'X-Accel-Expires' => '100') ] ],
    'hop-headers'    => [ [ send => LLMTest::FakeProvider::http_response(
                                status => 200, no_connection_header => 1,
                                headers => [ 'Content-Type' => 'application/json',
                                             'Connection' => 'close, X-Hop-Secret',
                                             'X-Hop-Secret' => 'internal',
                                             'X-Request-Id' => 'req-123',
                                             'Location' => 'https://provider.example/elsewhere',
                                             'WWW-Authenticate' => 'Bearer realm="provider"',
                                             'Proxy-Authenticate' => 'Basic',
                                             'Alt-Svc' => 'h3=":443"' ],
                                body => $COMPLETION) ] ],
    'continue'       => [ [ send => "HTTP/1.1 100 Continue\r\n\r\n" . reply() ] ],
    'continue-split' => [ [ pieces => [ "HTTP/1.1 100 Cont", "inue\r\nX-A: 1\r\n", "\r\nHTTP/1.1 102 Processing\r\n\r\n",
                                        reply() ], 0.05 ] ],
    'early-hints'    => [ [ send => "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" ],
                          [ sleep => 0.2 ], [ send => reply() ] ],
    'continue-body'  => [ [ send => "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHELLO" . reply() ] ],
    'switching'      => [ [ send => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    . "Connection: Upgrade\r\n\r\nRAW BYTES" ], [ 'close' ] ],
);

my $raw = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $m = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    return [ [ send => LLMTest::FakeProvider::http_response(
                   status => 404, headers => [ 'Content-Type' => 'application/json' ],
                   body => '{"error":{"message":"no such model","type":"invalid_request_error",'
                           . '"code":"model_not_found"}}') ] ]
        if $m =~ /^made-up-/;
    return $script{$m} // [ [ send => reply() ] ];
});

mkdir $t->dir . '/secret';
$t->write_file('secret/secret.txt', "INTERNAL SECRET FILE\n");

$t->run(<<'CONF');
http {
    llm_zone llm 1m;
    log_format llm '$llm_model|$llm_usage_source|$llm_input_tokens|$llm_output_tokens|$status|$request';

    llm_provider raw  { url http://127.0.0.1:%%PORT_RAW%%/v1; key k; read_timeout 3s; }
    llm_provider mock { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }
    llm_provider gem  { format gemini; url http://127.0.0.1:%%PORT_RAW%%/v1beta; key gk; }

    llm_route raw-then-mock {
        provider raw;
        fallback mock;
    }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;

        location /v1/          { llm_pass raw; }
        location /failover/v1/ { llm_pass raw-then-mock; llm_attempts_header on; }
        location /gemini/      { llm_pass gem; }
        location /forwarded/v1/ { llm_pass raw; llm_pass_forwarded on; }
        location /internal/    { internal; alias %%DIR%%/secret/; }
        location = /llm/status { llm_status; }
    }

    # the README's recipe: nginx core's own errors in JSON
    server {
        listen 127.0.0.1:%%PORT_CORE%%;
        error_page 400 494 /llm-error/400.json;
        error_page 405 /llm-error/405.json;
        error_page 501 /llm-error/501.json;
        location /llm-error/ {
            internal;
            default_type application/json;
            location = /llm-error/400.json { return 400 '{"error":{"message":"Bad request","type":"invalid_request_error","param":null,"code":"bad_request"}}\n'; }
            location = /llm-error/405.json { return 405 '{"error":{"message":"Method not allowed","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}\n'; }
            location = /llm-error/501.json { return 501 '{"error":{"message":"Not implemented","type":"invalid_request_error","param":null,"code":"not_implemented"}}\n'; }
        }
        location /v1/ { llm_pass raw; }
    }
}
CONF

my $gw = $t->port('GW');
my $MSGS = '[{"role":"user","content":"Hello"}]';

sub post {
    my ($body, %a) = @_;
    my $path = delete $a{path} // '/v1/chat/completions';
    return http_request(port => $gw, method => 'POST', path => $path, body => $body,
                        headers => [ 'Content-Type' => 'application/json', @{ delete $a{headers} // [] } ],
                        timeout => 10, %a);
}

sub requests_with {
    my ($re) = @_;
    return grep { $_->{raw} =~ $re } $raw->requests;
}

# ---------------------------------------------------------------------------
# 1. keys the gateway reads must be read the same way by the provider

my @refused = (
    [ 'escaped include_usage in stream_options',
      qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"include\\u005fusage":false}}) ],
    [ 'include_usage twice',
      qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"include_usage":true,"include_usage":false}}) ],
    [ 'include_usage in another case',
      qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"Include_Usage":false}}) ],
    [ 'any escaped key in stream_options',
      qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"\\u0078":1}}) ],
    [ 'Model beside model',  qq({"model":"m","Model":"gpt-4o","messages":$MSGS}) ],
    [ 'MODEL alone',         qq({"MODEL":"m","messages":$MSGS}) ],
    [ 'STREAM beside stream', qq({"model":"m","messages":$MSGS,"stream":false,"STREAM":true}) ],
    [ 'long s (U+017F) in stream', qq({"model":"m","messages":$MSGS,"\xc5\xbftream":true}) ],
    [ 'Messages beside messages', qq({"model":"m","messages":$MSGS,"Messages":[]}) ],
);

for my $c (@refused) {
    my ($what, $body) = @$c;
    my $before = () = $raw->requests;
    my $r = post($body);
    error_ok($r, 400, 'invalid_json', "$what: 400 invalid_json");
    my $after = () = $raw->requests;
    is($after, $before, "$what: nothing reached the provider");
}

# a key with the Kelvin sign folds to no key that the gateway reads
{
    my $r = post(qq({"model":"m","messages":$MSGS,"tas\xe2\x84\xaa":1}));
    is($r->{status}, 200, 'a key of no interest with a Kelvin sign passes');
}

# stream_options with other members: include_usage is added, the rest kept
{
    $raw->reset_log;
    my $body = qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"other":1}});
    post($body);
    my ($req) = $raw->requests;
    is($req && $req->{body},
       qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"include_usage":true,"other":1}}),
       'stream_options with another member: include_usage inserted, byte for byte');

    $raw->reset_log;
    $body = qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"include_usage":false}});
    post($body);
    ($req) = $raw->requests;
    is($req && $req->{body},
       qq({"model":"m","messages":$MSGS,"stream":true,"stream_options":{"include_usage":true}}),
       'include_usage false: set to true for the provider');
}

# ---------------------------------------------------------------------------
# 2. provider headers that nginx would obey are ignored, and hidden

{
    my $r = post(qq({"model":"accel-redirect","messages":$MSGS}));
    is($r->{status}, 200, 'X-Accel-Redirect from the provider: 200');
    unlike($r->{body}, qr/INTERNAL SECRET/, 'X-Accel-Redirect: the internal file is not served');
    like($r->{body}, qr/provider text/, 'X-Accel-Redirect: the provider reply is served');
    ok(!exists $r->{headers}{'x-accel-redirect'}, 'X-Accel-Redirect not passed to the client');
    ok(!exists $r->{headers}{'set-cookie'}, 'Set-Cookie not passed to the client');
    my $l = wait_for(sub { (grep { /^accel-redirect\|/ } $t->access_log('gw.log'))[0] }, 5);
    like($l // '', qr/^accel-redirect\|provider\|11\|7\|200\|/, 'X-Accel-Redirect: the usage is accounted');

    $r = post(qq({"model":"accel-other","messages":$MSGS}));
    is($r->{status}, 200, 'other X-Accel-* headers: 200');
    is($r->{headers}{'content-type'}, 'application/json', 'X-Accel-Charset not obeyed');
    ok(!(grep { /^x-accel/i } keys %{$r->{headers}}), 'no X-Accel-* header reaches the client');
    is($r->{body}, $COMPLETION, 'X-Accel-Limit-Rate etc.: the reply is whole');

    $r = post(qq({"model":"hop-headers","messages":$MSGS}));
    is($r->{status}, 200, 'hop-by-hop headers: 200');
    is($r->{headers}{'x-request-id'}, 'req-123', 'an ordinary provider header passes');
    for my $h (qw(x-hop-secret location www-authenticate proxy-authenticate alt-svc)) {
        ok(!exists $r->{headers}{$h}, "$h is not passed to the client");
    }
}

# ---------------------------------------------------------------------------
# 3. interim 1xx replies are skipped; 101 is an invalid reply

{
    for my $m (qw(continue continue-split early-hints)) {
        my $c = LLMTest::HTTP::Client->new(port => $gw);
        my $r = $c->request(method => 'POST', path => '/v1/chat/completions',
                            body => { model => $m, messages => [ { role => 'user', content => 'Hi' } ] });
        is($r->{status}, 200, "$m: the final reply's status");
        is($r->{body}, $COMPLETION, "$m: the final reply's body");
        cmp_ok($r->{time}, '<', 2, "$m: no wait for read_timeout");
        # the next request on the same client connection gets its own answer
        my $r2 = $c->request(method => 'POST', path => '/v1/chat/completions',
                             body => { model => 'plain', messages => [ { role => 'user', content => 'Hi' } ] });
        is($r2->{status}, 200, "$m: the next request on the connection: 200");
        is($r2->{body}, $COMPLETION, "$m: the next request on the connection: its own reply");
        $c->close;
    }

    my $r = post(qq({"model":"continue-body","messages":$MSGS}));
    error_ok($r, 502, 'provider_unavailable', '100 with a body: 502, the body is not relayed');
    unlike($r->{body}, qr/HELLO/, '100 with a body: its bytes do not reach the client');

    $r = post(qq({"model":"switching","messages":$MSGS}));
    error_ok($r, 502, 'provider_unavailable', '101 from a provider: 502');
    unlike($r->{body}, qr/RAW BYTES/, '101: the raw bytes do not reach the client');

    $r = post(qq({"model":"switching","messages":$MSGS}), path => '/failover/v1/chat/completions');
    is($r->{status}, 200, '101: the route fails over to the next provider');
    like($r->{headers}{'x-llm-attempts'} // '', qr/^raw:error,mock:200$/, '101: the attempt is an error');
}

# ---------------------------------------------------------------------------
# 4, 5, 7. model names: bounded, valid UTF-8, no control characters

{
    my $r = post(qq({"model":") . ('a' x 257) . qq(","messages":$MSGS}));
    error_ok($r, 400, 'invalid_model', 'a model name of 257 bytes: 400 invalid_model');
    $r = post(qq({"model":") . ('a' x 70000) . qq(","messages":$MSGS}));
    error_ok($r, 400, 'invalid_model', 'a model name of 70 KB: 400 invalid_model');
    unlike($r->{body}, qr/aaaaaaaaaa/, 'the long name is not echoed');
    $r = post(qq({"model":") . ('a' x 256) . qq(","messages":$MSGS}));
    is($r->{status}, 200, 'a model name of 256 bytes is served');

    for my $c ([ 'a raw 0xff byte', "x\xffy" ], [ 'an overlong encoding', "x\xc0\xafy" ],
               [ 'a truncated sequence', "x\xe2\x82" ], [ 'an escaped lone surrogate', 'x\ud800y' ],
               [ 'an escaped newline', 'x\n2026/01/01 00:00:00 [alert] 1#1: forged' ],
               [ 'a raw DEL', "x\x7fy" ], [ 'an escaped NUL', 'x\u0000y' ]) {
        my ($what, $name) = @$c;
        $r = post(qq({"model":"$name","messages":$MSGS}));
        error_ok($r, 400, 'invalid_model', "model with $what: 400 invalid_model");
    }

    $r = post(qq({"model":"caf\xc3\xa9-\xe6\xa8\xa1\xe5\x9e\x8b","messages":$MSGS}));
    is($r->{status}, 200, 'a model name in valid UTF-8 is served');

    $r = http_request(port => $gw, method => 'POST', path => '/gemini/v1beta/models/x%FFy:generateContent',
                      body => '{"contents":[]}');
    error_ok($r, 400, 'invalid_model', 'Gemini model %FF in the URL: 400 invalid_model');

    $r = http_request(port => $gw, method => 'POST',
                      path => '/v1/x%0A2026/01/01%2000:00:00%20[alert]%201#1:%20forged', body => '{}');
    error_ok($r, 404, 'unknown_url', 'a URL with an encoded newline: 404');

    # made-up names that the provider refuses get no statistics of their own
    for my $i (1 .. 40) {
        post(qq({"model":"made-up-$i","messages":$MSGS}));
    }
    $r = post(qq({"model":"plain","messages":$MSGS}));
    my (undef, $st) = status_json($gw, '/llm/status');
    ok($st, 'the status page is valid JSON in UTF-8');
    my @models = keys %{ $st && ref $st->{models} eq 'HASH' ? $st->{models} : {} };
    ok(!(grep { /^made-up-/ } @models), 'models the provider refused are not in the per-model statistics')
        or diag("@models");
    ok((grep { $_ eq 'plain' } @models), 'a served model is in the per-model statistics') or diag("@models");
}

# ---------------------------------------------------------------------------
# 10. a client's Gemini key stays at the gateway

{
    $raw->reset_log;
    my $r = http_request(port => $gw, method => 'POST',
                         path => '/gemini/v1beta/models/gemini-x:streamGenerateContent?key=CLIENTSECRET&alt=sse',
                         body => '{"contents":[{"parts":[{"text":"Hi"}]}]}');
    my ($req) = $raw->requests;
    ok($req, 'Gemini request reached the provider');
    is($req && $req->{path}, '/v1beta/models/gemini-x:streamGenerateContent?alt=sse',
       'the client key parameter is not forwarded, alt=sse is');
    is($req && $req->{headers}{'x-goog-api-key'}, 'gk', 'the provider key is sent');
    my @l = $t->wait_access_log('gw.log', 1);
    sleep 0.2;
    my $log = join "\n", $t->access_log('gw.log');
    unlike($log, qr/CLIENTSECRET/, 'the client key is not in the access log ($request)');
    like($log, qr/key=\*{12}&alt=sse/, 'the key is masked in $request');
}

# ---------------------------------------------------------------------------
# 11. client headers

{
    my $r = post(qq({"model":"m","messages":$MSGS}), headers => [ 'Content-Encoding' => 'gzip' ]);
    error_ok($r, 415, 'unsupported_content_encoding', 'Content-Encoding gzip: 415');
    $r = post(qq({"model":"m","messages":$MSGS}), headers => [ 'Content-Encoding' => 'identity' ]);
    is($r->{status}, 200, 'Content-Encoding identity: served');

    $raw->reset_log;
    post(qq({"model":"m","messages":$MSGS}),
         headers => [ 'X-HTTP-Method-Override' => 'DELETE', 'X-Forwarded-For' => '10.1.2.3',
                      'Forwarded' => 'for=10.1.2.3', 'X-Real-IP' => '10.1.2.3', 'X-Custom' => 'kept' ]);
    my ($req) = $raw->requests;
    my $h = $req ? $req->{headers} : {};
    ok(!exists $h->{'x-http-method-override'}, 'X-HTTP-Method-Override is not forwarded');
    ok(!exists $h->{'x-forwarded-for'} && !exists $h->{'forwarded'} && !exists $h->{'x-real-ip'},
       'Forwarded, X-Forwarded-For and X-Real-IP are not forwarded by default');
    is($h->{'x-custom'}, 'kept', 'other client headers are forwarded');
    ok(!exists $h->{'content-encoding'}, 'Content-Encoding is not forwarded');

    $raw->reset_log;
    post(qq({"model":"m","messages":$MSGS}), path => '/forwarded/v1/chat/completions',
         headers => [ 'X-Forwarded-For' => '10.1.2.3', 'Forwarded' => 'for=10.1.2.3' ]);
    ($req) = $raw->requests;
    is($req && $req->{headers}{'x-forwarded-for'}, '10.1.2.3', 'llm_pass_forwarded on: X-Forwarded-For forwarded');
    is($req && $req->{headers}{'forwarded'}, 'for=10.1.2.3', 'llm_pass_forwarded on: Forwarded forwarded');
}

# ---------------------------------------------------------------------------
# 14. the README's error_page recipe makes nginx core's errors JSON

{
    my $core = $t->port('CORE');
    my $r = http_raw($core, "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n");
    error_ok($r, 400, 'bad_request', 'a malformed header: nginx core 400 in JSON');
    $r = http_raw($core, "FOO\x01 /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n");
    error_ok($r, 400, 'bad_request', 'a malformed request line: 400 in JSON');
    $r = http_raw($core, "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: " . ('a' x 9000) . "\r\n\r\n");
    error_ok($r, 400, 'bad_request', 'a header too large (494): 400 in JSON');
    $r = http_raw($core, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n");
    error_ok($r, 501, 'not_implemented', 'an unknown transfer coding: 501 in JSON');
}

$t->finish;

my $elog = $t->error_log;
unlike($elog, qr/^2026\/01\/01 00:00:00 \[alert\]/m, 'no forged line in the error log');
like($elog, qr/\\x0a2026\/01\/01/, 'the newline of the URL is escaped in the error log');

done_testing;
