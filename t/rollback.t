#!/usr/bin/perl
# Canary with automatic rollback (llm_experiment ... rollback): a variant
# whose provider fails is rolled back once the guardrail has its evidence
# (min requests per arm, the sequential test), not before; its traffic then
# goes to the control, in every worker, until a reload; a variant as good
# as the control is never rolled back (an A/A run of 2,000 requests); a
# slow variant is rolled back by the latency guardrail.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Usage qw(status_json);

my $t = LLMTest->new(workers => 2);

$t->run(<<'CONF');
http {
    llm_zone llm 4m;
    log_format llm '$http_x_test|$llm_experiment|$llm_variant|$status';

    llm_provider good { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; }
    llm_provider bad  { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Status 500; }
    llm_provider slow { url http://127.0.0.1:%%PORT_MOCK%%/v1; key k; header X-Mock-Delay 150; }

    llm_route good { provider good; retry off; }
    llm_route bad  { provider bad; retry off; }
    llm_route slow { provider slow; retry off; }

    llm_experiment canary {
        key $http_x_user;
        variant stable 1 control;
        variant next   1 route=bad;
        rollback error_rate>0.05 min=30;
    }

    llm_experiment aa {
        key $http_x_user;
        variant a 1 control;
        variant b 1;
        rollback error_rate>0.02 latency_p95>200ms cost_per_request>0.01 min=50;
    }

    llm_experiment latency {
        key $http_x_user;
        variant fast 1 control;
        variant sluggish 1 route=slow;
        rollback latency_p95>100ms min=20;
    }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location /v1/ { llm_mock; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /canary/v1/  { llm_pass good; llm_experiment canary; }
        location /aa/v1/      { llm_pass good; llm_experiment aa; }
        location /latency/v1/ { llm_pass good; llm_experiment latency; }
        location = /status    { llm_status; }
    }
}
CONF

my $gw = $t->port('GW');

sub chat {
    my ($loc, $user, $test) = @_;
    return http_request(port => $gw, method => 'POST', path => "/$loc/v1/chat/completions",
                        headers => [ 'X-User' => $user, 'X-Test' => $test // $loc ],
                        body => { model => 'm', messages => [ { role => 'user', content => 'Hi' } ] });
}

sub variant_status {
    my ($exp, $v) = @_;
    my (undef, $st) = status_json($gw, '/status');
    return (($st // {})->{experiments}{$exp}{variants}{$v}) // {};
}

# the canary fails every request; before both arms have 30 requests it is
# not judged
{
    my $i = 0;
    while (1) {
        chat('canary', 'user-' . $i++);
        my $next = variant_status('canary', 'next');
        my $stable = variant_status('canary', 'stable');
        if (($next->{requests} // 0) < 30 || ($stable->{requests} // 0) < 30) {
            ok(!$next->{rolled_back}, "not rolled back before 30 requests an arm ($i sent)") if $i % 20 == 0;
            next;
        }
        last if $next->{rolled_back} || $i > 400;
    }
    my $next = variant_status('canary', 'next');
    ok($next->{rolled_back}, 'a failing canary is rolled back once the evidence is in');
    is($next->{rolled_back}{reason}, 'error_rate', 'by its error rate');
    cmp_ok($next->{requests}, '<=', 30 + 16, 'soon after the minimum (' . $next->{requests} . ' requests)');
    like($t->error_log, qr/llm experiment "canary": variant "next" rolled back \(error_rate\)/,
         'the error log says why and when');

    # every worker sends its traffic to the control now
    sleep 1.1;
    my %v;
    for my $u (0 .. 99) {
        my $r = chat('canary', "after-$u", "after-$u");
        $v{$r->{status}}++;
    }
    is($v{200}, 100, 'after the rollback: every request answered 200');
    my @l = grep { /^after-/ } $t->access_log('gw.log');
    wait_for(sub { @l = grep { /^after-/ } $t->access_log('gw.log'); @l == 100 }, 5);
    is(scalar(grep { /\|canary\|stable\|200$/ } @l), 100, 'after the rollback: all of it to the control');
}

# an A/A run: two identical variants, 2,000 requests: never rolled back
{
    my @fail = $t->parallel('aa', 2000, 8, sub {
        my ($i) = @_;
        my $r = chat('aa', "aa-user-$i");
        return $r->{status} == 200 ? '' : "status $r->{status}";
    });
    is(scalar @fail, 0, 'A/A: 2,000 requests answered');
    my $b = variant_status('aa', 'b');
    my $a = variant_status('aa', 'a');
    cmp_ok($a->{requests} + $b->{requests}, '==', 2000, 'A/A: both arms counted');
    ok(!$b->{rolled_back}, 'A/A: the variant is never rolled back');
}

# a slow variant: rolled back by the latency guardrail
{
    for my $i (0 .. 79) {
        chat('latency', "lat-$i");
    }
    my $s = variant_status('latency', 'sluggish');
    ok($s->{rolled_back}, 'a slow variant is rolled back');
    is($s->{rolled_back}{reason}, 'latency_p95', 'by its p95 latency');
}

# a reload ends the rollback (the statistics stay)
{
    my $before = variant_status('canary', 'next')->{requests};
    ok($t->reload(undef, wait_old => 1), 'reload');
    my $next = variant_status('canary', 'next');
    ok(!$next->{rolled_back}, 'after a reload: the variant is back');
    is($next->{requests}, $before, 'and its statistics are kept');
    my $n = 0;
    for my $u (0 .. 49) {
        $n++ if (chat('canary', "again-$u", "again-$u")->{status} // 0) == 500;
    }
    cmp_ok($n, '>', 0, 'after a reload: the canary gets traffic again');
}

$t->finish;
done_testing;
