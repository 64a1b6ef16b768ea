#!/usr/bin/perl
# Shadow variants: a copy of a share of the requests goes, as a background
# subrequest, to the shadow's variant (its route, model, prompt); the
# client's reply is the same bytes and does not wait for it, whether the
# shadow is slow or fails; the shadow's usage, cost, latency and errors
# are counted under its name (and logged with log_subrequest on).

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(status_json);
use Time::HiRes qw(time);

my $t = LLMTest->new(workers => 2);

my $BODY = '{"id":"c","object":"chat.completion","created":1,"model":"m","choices":'
         . '[{"index":0,"message":{"role":"assistant","content":"fixed"},"finish_reason":"stop"}],'
         . '"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}';

my $fake = $t->fake_provider(port => $t->port('FAKE'), handler => sub {
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json' ], body => $BODY) ] ];
});

$t->run(<<'CONF');
http {
    llm_zone llm 1m;
    llm_price m input=1 output=2;
    log_subrequest on;
    log_format llm '$http_x_test|$llm_variant|$llm_provider|$llm_input_tokens|$llm_output_tokens|$llm_cost|$status';

    llm_provider main  { url http://127.0.0.1:%%PORT_FAKE%%/v1; key k; }
    llm_provider slowp { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Delay 1500; }
    llm_provider failp { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 500; }
    llm_route slow { provider slowp; retry off; }
    llm_route fail { provider failp; retry off; }

    llm_experiment plain { variant main 1; }
    llm_experiment slow  { key $http_x_user; variant main 1 control; variant candidate 1 shadow route=slow "system=Be brief."; }
    llm_experiment fail  { key $http_x_user; variant main 1 control; variant broken 1 shadow route=fail; }

    server { listen 127.0.0.1:%%PORT_MOCK%%; access_log off; location /v1/ { llm_mock; } }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /plain/v1/ { llm_pass main; llm_experiment plain; }
        location /slow/v1/  { llm_pass main; llm_experiment slow; }
        location /fail/v1/  { llm_pass main; llm_experiment fail; }
        location = /status  { llm_status; }
    }
}
CONF

my $gw = $t->port('GW');
my $REQ = '{"model":"m","messages":[{"role":"user","content":"Hello"}]}';

sub chat {
    my ($loc, $user, $test) = @_;
    my $t0 = time;
    my $r = http_request(port => $gw, method => 'POST', path => "/$loc/v1/chat/completions", body => $REQ,
                         headers => [ 'Content-Type' => 'application/json', 'X-User' => $user, 'X-Test' => $test ]);
    $r->{elapsed} = time - $t0;
    return $r;
}

sub variant {
    my ($exp, $v) = @_;
    my (undef, $st) = status_json($gw, '/status');
    return (($st // {})->{experiments}{$exp}{variants}{$v}) // {};
}

my $plain = chat('plain', 'u', 'plain');
is($plain->{body}, $BODY, 'without a shadow: the provider\'s bytes');

# the shadow takes 1.5 s; the client's reply does not wait for it
my ($copied, $max) = (0, 0);
for my $i (1 .. 10) {
    my $r = chat('slow', "user-$i", "slow-$i");
    is($r->{body}, $plain->{body}, "with a slow shadow ($i): the same bytes");
    $max = $r->{elapsed} if $r->{elapsed} > $max;
}
cmp_ok($max, '<', 1.0, sprintf('with a slow shadow: no reply waited for it (at most %.3f s)', $max));

my @l;
wait_for(sub { @l = grep { /\|candidate\|/ } $t->access_log('gw.log');
               @l >= 1 && variant('slow', 'candidate')->{requests} == @l
               && variant('slow', 'main')->{requests} == 10 }, 10);
my $cand = variant('slow', 'candidate');
cmp_ok($cand->{requests}, '>', 0, "a share of the requests was copied to the shadow ($cand->{requests} of 10)");
cmp_ok($cand->{requests}, '<', 10, 'but not all of them (its weight is half)');
is(variant('slow', 'main')->{requests}, 10, 'the control counts every client request');
# a copy still running when its client goes away is counted, but nginx
# ends a background subrequest so without its log line
cmp_ok(scalar @l, '>', 0, 'the copies have log lines under the shadow\'s name');
cmp_ok(scalar @l, '<=', $cand->{requests}, 'no more than the copies counted');
like($l[0] // '', qr/^slow-\d+\|candidate\|slowp\|\d+\|18\|[\d.]+\|200$/, 'with its provider, usage and cost');
cmp_ok($cand->{output_tokens}, '==', 18 * $cand->{requests}, 'the shadow\'s usage on the status page');
cmp_ok($cand->{latency_ms}{p50}, '>=', 1000, 'and its own latency');
cmp_ok(variant('slow', 'main')->{latency_ms}{p95}, '<', 1000, 'the control\'s latency is not the shadow\'s');
ok($fake->requests == 11, 'the shadow never reached the main provider');

# a failing shadow: the client is not affected
for my $i (1 .. 10) {
    my $r = chat('fail', "user-$i", "fail-$i");
    is($r->{status}, 200, "with a failing shadow ($i): 200");
    is($r->{body}, $BODY, "with a failing shadow ($i): the same bytes");
}
wait_for(sub { (variant('fail', 'broken')->{errors} // 0) > 0 }, 5);
my $b = variant('fail', 'broken');
cmp_ok($b->{errors}, '>', 0, "the shadow's errors are counted ($b->{errors})");
is($b->{errors}, $b->{requests}, 'every copy failed');

$t->finish;
done_testing;
