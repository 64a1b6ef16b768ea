#!/usr/bin/perl
# Two worker processes: parallel mixed load, a reload under load, and the
# weighted split of a route.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use POSIX ();
use Time::HiRes qw(time sleep);

my $t = LLMTest->new(workers => 2, error_level => 'notice');

my $conf = sub {
    my ($extra_model) = @_;
    return <<"CONF";
http {
    log_format llm '\$request_uri|\$llm_provider|\$llm_route|\$llm_upstream_model|\$status';

    llm_provider pa {
        url http://127.0.0.1:%%PORT_MOCK%%/a/v1;
        key ka;
        model gpt-4o gpt-4o-a;
        $extra_model
    }
    llm_provider pb {
        url http://127.0.0.1:%%PORT_MOCK%%/b/v1;
        key kb;
        model gpt-4o gpt-4o-b;
    }
    llm_route split { provider pa weight=3; provider pb weight=1; }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location / { llm_mock delay=20ms; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log llm;
        location /v1/ { llm_pass split; }
    }
}
CONF
};

$t->run($conf->(''));
my $gw = $t->port('GW');
my $TEXT = mock_text();
my @workers;
wait_for(sub { @workers = $t->worker_pids; @workers == 2 }, 5);
is(scalar @workers, 2, 'two worker processes');

# one request; returns '' on success or a reason
sub one {
    my ($i, $tag) = @_;
    my $stream = $i % 2;
    my $body = { model => 'gpt-4o', messages => [ { role => 'user', content => "req $i" } ],
                 ($stream ? (stream => JSON::PP::true) : ()) };
    my $path = "/v1/chat/completions?$tag=$i";
    if ($stream) {
        my $s = LLMTest::HTTP::Stream->open(port => $gw, path => $path, body => $body, timeout => 20);
        $s->read_all(20);
        return "stream $i: status $s->{status} " . ($s->{error} // '') if $s->{status} != 200;
        return "stream $i: not terminated" unless $s->complete;
        my @p = $s->data_payloads;
        return "stream $i: no [DONE]" unless @p && $p[-1] eq '[DONE]';
        my $text = join '', map { my $j = json_decode($_); ref $j ? $j->{choices}[0]{delta}{content} // '' : '' }
            @p[0 .. $#p - 1];
        return "stream $i: wrong text" unless $text eq $TEXT;
    } else {
        my $r = http_request(port => $gw, method => 'POST', path => $path, body => $body, timeout => 20);
        return "chat $i: status $r->{status} " . ($r->{error} // '') if $r->{status} != 200;
        return "chat $i: wrong body" unless ($r->{json}{choices}[0]{message}{content} // '') eq $TEXT;
    }
    return '';
}

# ---------------------------------------------------------------------------

{
    my $t0 = time;
    my @fail = $t->parallel('load', 200, 10, sub { one($_[0], 'load') });
    is(scalar @fail, 0, '200 mixed requests (stream and non-stream) in 10 parallel clients all succeed')
        or diag(join "\n", @fail[0 .. ($#fail > 10 ? 10 : $#fail)]);
    note(sprintf 'load: %.2fs', time - $t0);
}

# reload with a new config while requests are in flight
{
    my $reloaded = 0;
    my @fail = $t->parallel('reload', 200, 8, sub { one($_[0], 'reload') }, sub {
        wait_for(sub { $t->done_count('reload') >= 40 }, 20);
        $reloaded = $t->reload($conf->('model newalias gpt-4o-new;'));
    });
    ok($reloaded, 'reload under load: new workers started');
    is(scalar @fail, 0, 'reload under load: all 200 requests succeed')
        or diag(join "\n", @fail[0 .. ($#fail > 10 ? 10 : $#fail)]);
    my @new = $t->worker_pids;
    wait_for(sub { @new = grep { my $p = $_; !grep { $_ == $p } @workers } $t->worker_pids; @new == 2 }, 10);
    is(scalar @new, 2, 'reload under load: two new worker processes');

    my $r = http_request(port => $gw, method => 'GET', path => '/v1/models');
    ok((grep { $_->{id} eq 'newalias' } @{$r->{json}{data} // []}), 'reload: the new config is in effect');
    $r = http_request(port => $gw, method => 'POST', path => '/v1/chat/completions',
                      body => { model => 'newalias', messages => [ { role => 'user', content => 'x' } ] });
    is($r->{json}{model}, 'gpt-4o-new', 'reload: new model alias routed');
}

# weighted route 3:1 over 400 requests
{
    my @fail = $t->parallel('weight', 400, 8, sub { one($_[0], 'weight') });
    is(scalar @fail, 0, 'weighted route: 400 requests succeed') or diag(join "\n", @fail[0 .. 5]);
    my @l;
    wait_for(sub { @l = grep { /[?&]weight=\d+\|/ } $t->access_log('gw.log'); @l >= 400 }, 10);
    is(scalar @l, 400, 'weighted route: 400 access log lines');
    my %n;
    $n{(split /\|/)[1]}++ for @l;
    note(join ', ', map { "$_=$n{$_}" } sort keys %n);
    my ($na, $nb) = ($n{pa} // 0, $n{pb} // 0);
    is($na + $nb, 400, 'weighted route: every request went to pa or pb ($llm_provider)');
    ok($na >= 270 && $na <= 330, "weighted route 3:1: pa got $na of 400 (expected 300 +- 30)");
    ok($nb >= 70 && $nb <= 130, "weighted route 3:1: pb got $nb of 400 (expected 100 +- 30)");
    my @mismatch = grep { my @f = split /\|/; ($f[1] eq 'pa' && $f[3] ne 'gpt-4o-a')
                                             || ($f[1] eq 'pb' && $f[3] ne 'gpt-4o-b') } @l;
    is(scalar @mismatch, 0, 'weighted route: $llm_upstream_model matches the chosen provider');
    ok(!grep({ (split /\|/)[2] ne 'split' } @l), 'weighted route: $llm_route is the route name');
}

$t->finish;
done_testing;
