#!/usr/bin/perl
# llm_experiment, llm_feedback and the experiments of the status page, with
# 2 workers:
# - the split of 10,000 keys (each key's variant predicted by an independent
#   weighted rendezvous hash, t/lib/LLMTest/Experiment.pm; the shares within
#   a chi-square bound), stickiness across both workers, random variants for
#   an empty key, and a weight raised by a reload moving keys only into its
#   variant;
# - every prompt mode on no, a string and an array-of-parts system prompt,
#   on the OpenAI chat and the Anthropic messages endpoints, the forwarded
#   body checked byte for byte (also a 200 KB body, a stream, several edits
#   at once); parameters, model and route overrides (forwarded, priced,
#   logged); a variant's max_tokens under a limit's clamp;
# - signed request ids on every reply (the provider's, the gateway's 502 and
#   429) and feedback: counted once (also by 8 clients at once); forged,
#   truncated, other-secret, unknown and replayed ids refused and not
#   counted; expired ids; invalid feedback bodies;
# - the statistics of 1,000 vs 1,000 outcomes (10% vs 13%) against values
#   computed here: z and lift within 1e-6 (relative), p-values within 1e-4,
#   the sequential p-value as the least 1/Lambda over the outcomes in the
#   order they were counted;
# - statistics kept by a reload that leaves an experiment as it was, reset
#   by one that changes it (a weight, a variant's parameters, its prompt
#   file, a variant renamed);
# - nginx -t errors.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;
use LLMTest::Experiment qw(:all);
use Time::HiRes qw(time sleep);

my $t = LLMTest->new(workers => 2);

my $SECRET  = 'exp-secret-7c1e0b9a';
my $SECRET2 = 'a-different-secret-22';
$t->write_file('secret.txt', "$SECRET\n");
$t->write_file('secret2.txt', "$SECRET2\n");

# the prompts of the variants, as the module should see them (bytes)
my $TEXT_REP  = "Say \"hi\"\tthen\\stop.\nDone.";
my $TEXT_PRE  = "Be brief \xe2\x80\x94 tr\xc3\xa8s.";
my $TEXT_FILE = "Cite \"sources\".\nAlways.";
$t->write_file('prompt-v2.txt', $TEXT_FILE);

my $MOCK_TEXT = mock_text();
my $MOCK_OUT  = ceil4(length $MOCK_TEXT);

# the fake provider: an OpenAI reply (usage 1000 in, 500 out) or, for
# /messages, an Anthropic one; the body depends on the path and model only
sub fake_body {
    my ($path, $model) = @_;
    return json_encode({
        id => 'msg_exp', type => 'message', role => 'assistant', model => $model,
        content => [ { type => 'text', text => 'hi' } ], stop_reason => 'end_turn',
        usage => { input_tokens => 10, output_tokens => 5 },
    }) if $path =~ m{/messages$};
    return json_encode({
        id => 'chatcmpl-exp', object => 'chat.completion', created => 1, model => $model,
        choices => [ { index => 0, message => { role => 'assistant', content => 'hi' },
                       finish_reason => 'stop' } ],
        usage => { prompt_tokens => 1000, completion_tokens => 500, total_tokens => 1500 },
    });
}

my $fp = $t->fake_provider(port => $t->port('RAW'), handler => sub {
    my ($req) = @_;
    my $model = ref $req->{json} eq 'HASH' ? $req->{json}{model} // '' : '';
    if (ref $req->{json} eq 'HASH' && $req->{json}{stream} && $req->{path} =~ m{/chat/completions$}) {
        my $c = qq({"id":"c1","object":"chat.completion.chunk","created":1,"model":"$model","choices":);
        return [ [ send => sse_response(events => [
            "data: $c" . qq([{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}\n\n),
            "data: $c" . qq([{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n),
            "data: $c" . qq([],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}\n\n),
            "data: [DONE]\n\n" ]) ] ];
    }
    return [ [ send => LLMTest::FakeProvider::http_response(
        status => 200, headers => [ 'Content-Type' => 'application/json' ],
        body => fake_body($req->{path}, $model)) ] ];
});

my $CONF = <<'CONF';
http {
    llm_zone llm 16m;

    log_format exp '$http_x_test_id|$http_x_user|$llm_experiment|$llm_variant|$llm_model|$llm_upstream_model|$llm_cost|$llm_request_id|$request_id|$llm_route|$llm_provider|$pid|$status|$llm_limit_status';

    llm_price small        input=1  output=1;
    llm_price big-upstream input=10 output=20;
    llm_price m-ab         input=1  output=2;

    llm_provider mock   { url http://127.0.0.1:%%PORT_MOCK%%/v1; }
    llm_provider raw    { url http://127.0.0.1:%%PORT_RAW%%/v1; key sk-raw; model small; model big big-upstream; }
    llm_provider raw2   { url http://127.0.0.1:%%PORT_RAW%%/alt/v1; key sk-alt; model small small-alt; }
    llm_provider claude { format anthropic; url http://127.0.0.1:%%PORT_RAW%%/v1; key sk-ant; }

    llm_route mockr { provider mock; }
    llm_route rawr  { provider raw; }
    llm_route alt   { provider raw2; }

    llm_experiment split {
        key $http_x_user;
        variant a 2;
        variant b %%SPLIT_B%% control;
        variant c 5;
        header on;
    }

    llm_experiment rep    { variant r 1 "system=Say \"hi\"\tthen\\stop.\nDone." mode=replace; header on; }
    llm_experiment pre    { variant p 1 "system=Be brief — très." mode=prepend; }
    llm_experiment app    { variant x 1 system_file=%%DIR%%/prompt-v2.txt mode=append; }
    llm_experiment params { variant p 1 temperature=0.2 top_p=0.9 max_tokens=50; }
    llm_experiment noop   { variant same 1; }
    llm_experiment mdl    { variant big 1 model=big; }
    llm_experiment rt     { variant alt 1 route=alt; }
    llm_experiment srv    { variant s 1; header on; }
    llm_experiment dflt   { variant d 1 "system=Default."; }
    llm_experiment combo  { variant c 1 "system=Combo." mode=append model=big temperature=0.1 max_tokens=9; }

    llm_limit_zone lim:1m key=fixed tokens=3000/m;
    llm_limit_zone once:1m key=fixed requests=1/m;

    llm_provider dead   { url http://127.0.0.1:%%PORT_DEAD%%/v1; connect_timeout 2s; }
    llm_route deadr { provider dead; }

    llm_experiment fb {
        key $http_x_user;
        variant a 1;
        variant %%FB_B%% 1;
        secret_file %%DIR%%/secret.txt;
        header on;
    }
    llm_experiment fbshort { variant s 1; secret_file %%DIR%%/secret.txt; feedback_window 2s; mde 20%; }
    llm_experiment other   { variant o 1; secret_file %%DIR%%/secret2.txt; }

    llm_experiment ab {
        variant a 1 control;
        variant b 1%%AB_B%%;
        secret_file %%DIR%%/secret.txt;
    }

    server {
        listen 127.0.0.1:%%PORT_GW%% reuseport;
        access_log %%DIR%%/gw.log exp;

        location /split/v1/       { llm_pass mockr; llm_experiment split; access_log %%DIR%%/split.log exp; }
        location /rep/v1/         { llm_pass rawr;   llm_experiment rep; }
        location /rep/claude/v1/  { llm_pass claude; llm_experiment rep; }
        location /pre/v1/         { llm_pass rawr;   llm_experiment pre; }
        location /pre/claude/v1/  { llm_pass claude; llm_experiment pre; }
        location /app/v1/         { llm_pass rawr;   llm_experiment app; }
        location /app/claude/v1/  { llm_pass claude; llm_experiment app; }
        location /params/v1/      { llm_pass rawr;   llm_experiment params; }
        location /params/claude/v1/ { llm_pass claude; llm_experiment params; }
        location /dflt/v1/        { llm_pass rawr;   llm_experiment dflt; }
        location /combo/v1/       { llm_pass rawr;   llm_experiment combo; }
        location /combo/claude/v1/ { llm_pass claude; llm_experiment combo; }
        location /limited/v1/     { llm_pass rawr;   llm_experiment params; llm_limit lim clamp; }
        location /noop/v1/        { llm_pass rawr;   llm_experiment noop; }
        location /mdl/v1/         { llm_pass rawr;   llm_experiment mdl; }
        location /rt/v1/          { llm_pass rawr;   llm_experiment rt; }
        location /raw/v1/         { llm_pass rawr; }
        location /plain/v1/       { llm_pass mockr; }
        location /fb/v1/          { llm_pass mockr;  llm_experiment fb; }
        location /fbdead/v1/      { llm_pass deadr;  llm_experiment fb; }
        location /fbonce/v1/      { llm_pass mockr;  llm_experiment fb; llm_limit once; }
        location /fbshort/v1/     { llm_pass mockr;  llm_experiment fbshort; }
        location /other/v1/       { llm_pass mockr;  llm_experiment other; }
        location /ab/v1/          { llm_pass mockr;  llm_experiment ab; access_log %%DIR%%/ab.log exp; }
        location = /v1/feedback   { llm_feedback; }
        location = /status        { access_log off; llm_status; }
    }

    server {
        listen 127.0.0.1:%%PORT_GW2%%;
        access_log %%DIR%%/gw.log exp;
        llm_experiment srv;
        location /v1/ { llm_pass mockr; }
    }

    server {
        listen 127.0.0.1:%%PORT_MOCK%%;
        access_log off;
        location /v1/ { llm_mock; }
    }
}
CONF

sub conf {
    my (%o) = (split_b => 3, ab_b => '', fb_b => 'b', @_);
    my $c = $CONF;
    $c =~ s/%%FB_B%%/$o{fb_b}/g;
    $c =~ s/%%SPLIT_B%%/$o{split_b}/g;
    $c =~ s/%%AB_B%%/$o{ab_b}/g;
    return $c;
}

$t->run(conf());

my $gw = $t->port('GW');

my @F = qw(id user experiment variant model upstream_model cost llm_request_id request_id
           route provider pid status limit);

sub parse_log_line {
    my ($l) = @_;
    my %h;
    @h{@F} = split /\|/, $l, -1;
    return \%h;
}

sub log_of {
    my ($id, $file) = @_;
    my $l = wait_for(sub { (grep { index($_, "$id|") == 0 } $t->access_log($file // 'gw.log'))[0] }, 5);
    return $l ? parse_log_line($l) : {};
}

sub post {
    my ($path, $body, @h) = @_;
    return http_request(port => $gw, method => 'POST', path => $path,
                        headers => [ 'Content-Type' => 'application/json', @h ], body => $body);
}

sub status {
    my $r = http_request(port => $gw, path => '/status');
    return ref $r->{json} eq 'HASH' ? $r->{json} : {};
}

sub exp_status { my ($st, $e) = @_; return $st->{experiments}{$e} // {} }

# the request the fake provider got with this X-Test-Id
sub forwarded {
    my ($id) = @_;
    return wait_for(sub {
        (grep { ($_->{headers}{'x-test-id'} // '') eq $id } $fp->requests)[0] }, 5) // {};
}

sub diff_at {
    my ($got, $want) = @_;
    $got //= '(undef)';
    my $i = 0;
    $i++ while $i < length $got && $i < length $want && substr($got, $i, 1) eq substr($want, $i, 1);
    return sprintf "got %d bytes, expected %d; first difference at byte %d:\n got: %s\nwant: %s",
        length $got, length $want, $i, substr($got, $i > 40 ? $i - 40 : 0, 120),
        substr($want, $i > 40 ? $i - 40 : 0, 120);
}

sub same_bytes {
    my ($got, $want, $name) = @_;
    ok(defined $got && $got eq $want, $name) or diag(diff_at($got, $want));
}

# |got - want| <= tol * max(1, |want|)
sub near {
    my ($got, $want, $tol, $name) = @_;
    my $ok = defined $got && !ref $got && $got =~ /^-?[\d.]+(?:[eE][-+]?\d+)?$/
             && abs($got - $want) <= $tol * (abs($want) > 1 ? abs($want) : 1);
    ok($ok, $name) or diag('got ' . (defined $got ? (ref $got ? json_encode($got) : $got) : 'undef')
                           . ", expected $want (tolerance $tol)");
}

my $MSGS = '[{"role":"user","content":"Hello world!"}]';

# ---------------------------------------------------------------------------
# split: 10,000 keys, each assigned as predicted, shares within a chi-square
# bound (2 degrees of freedom, 0.1%: 13.816)

my $CHI2_2_999 = 13.816;
my @SPLIT = ([ a => 2 ], [ b => 3 ], [ c => 5 ]);
my $NKEYS = 10_000;
my $MOCK_BODY = qq({"model":"m-split","messages":$MSGS});

my %pred;
$pred{"user-$_"} = assign_variant('split', "user-$_", @SPLIT) for 0 .. $NKEYS - 1;

sub shares_expected {
    my ($n, @v) = @_;
    my $sum = 0;
    $sum += $_->[1] for @v;
    return map { $n * $_->[1] / $sum } @v;
}

{
    my %pc;
    $pc{$_}++ for values %pred;
    my @pobs = map { $pc{$_->[0]} // 0 } @SPLIT;
    cmp_ok(chisq(\@pobs, [ shares_expected($NKEYS, @SPLIT) ]), '<', $CHI2_2_999,
           'split: the predicted assignment of the 10,000 keys has the shares of the weights')
        or diag("predicted counts @pobs");

    my $client;
    my @fail = $t->parallel('split', $NKEYS, 4, sub {
        my ($i) = @_;
        $client //= LLMTest::HTTP::Client->new(port => $gw);
        my $r = $client->request(method => 'POST', path => '/split/v1/chat/completions',
            headers => [ 'Content-Type' => 'application/json', 'X-User' => "user-$i",
                         'X-Test-Id' => "split-$i" ],
            body => $MOCK_BODY);
        return "status $r->{status} " . ($r->{error} // '') unless $r->{status} == 200;
        my $h = $r->{headers}{'x-llm-variant'} // '(none)';
        my $w = $pred{"user-$i"};
        return $h eq "split/$w" ? '' : "user-$i: X-LLM-Variant $h, predicted split/$w";
    });
    ok(!@fail, "split: each of the 10,000 keys got its predicted variant (X-LLM-Variant)")
        or diag(scalar(@fail) . " failures, e.g.:\n" . join("\n", @fail[0 .. ($#fail > 9 ? 9 : $#fail)]));

    my @l = grep { $_->{id} =~ /^split-\d+$/ }
            map { parse_log_line($_) } $t->wait_access_log('split.log', $NKEYS, 10);
    is(scalar @l, $NKEYS, 'split: every request logged');
    my (%oc, @bad);
    for my $l (@l) {
        $oc{$l->{variant}}++;
        push @bad, "$l->{user}: logged $l->{experiment}/$l->{variant}"
            if $l->{experiment} ne 'split' || $l->{variant} ne ($pred{$l->{user}} // '');
    }
    ok(!@bad, 'split: $llm_experiment and $llm_variant logged as predicted for every key')
        or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
    my @obs = map { $oc{$_->[0]} // 0 } @SPLIT;
    my $c2 = chisq(\@obs, [ shares_expected($NKEYS, @SPLIT) ]);
    cmp_ok($c2, '<', $CHI2_2_999, 'split: the observed shares 2:3:5 are within the chi-square bound')
        or diag("observed @obs");
}

# stickiness: one key, 100 requests on new connections, both workers

{
    my $want = assign_variant('split', 'sticky-user', @SPLIT);
    my @fail = $t->parallel('sticky', 100, 4, sub {
        my ($i) = @_;
        my $r = http_request(port => $gw, method => 'POST', path => '/split/v1/chat/completions',
            headers => [ 'Content-Type' => 'application/json', 'X-User' => 'sticky-user',
                         'X-Test-Id' => "sticky-$i" ],
            body => $MOCK_BODY);
        my $h = $r->{headers}{'x-llm-variant'} // '(none)';
        return $h eq "split/$want" ? '' : "status $r->{status}, X-LLM-Variant $h, expected split/$want";
    });
    ok(!@fail, 'sticky: the same key gets the same variant 100 times') or diag(join "\n", @fail[0 .. 4]);
    my @l = grep { $_->{id} =~ /^sticky-/ }
            map { parse_log_line($_) } $t->wait_access_log('split.log', $NKEYS + 100, 10);
    my %pids = map { $_->{pid} => 1 } @l;
    cmp_ok(scalar keys %pids, '>=', 2, 'sticky: the requests were served by both workers');
    ok(!grep({ $_->{variant} ne $want } @l), 'sticky: ... and both logged the same variant');

    # keys of other bytes: UTF-8, long, with spaces
    my @odd = ("\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87-1", 'k' x 300, 'k' x 1000, 'user with spaces', '0');
    my @bad;
    for my $k (@odd) {
        my $w = assign_variant('split', $k, @SPLIT);
        for my $n (1 .. 3) {
            my $r = post('/split/v1/chat/completions', $MOCK_BODY, 'X-User' => $k, 'X-Test-Id' => "odd-$n");
            my $h = $r->{headers}{'x-llm-variant'} // '(none)';
            push @bad, "key '" . substr($k, 0, 20) . "': $h, expected split/$w" if $h ne "split/$w";
        }
    }
    ok(!@bad, 'sticky: UTF-8, long and spaced keys get their predicted variant') or diag(join "\n", @bad);
}

# an empty key: a random variant per request, with the weights' shares

{
    my $n = 1600;
    my $client;
    my @fail = $t->parallel('rand', $n, 4, sub {
        my ($i) = @_;
        $client //= LLMTest::HTTP::Client->new(port => $gw);
        my $r = $client->request(method => 'POST', path => '/split/v1/chat/completions',
            headers => [ 'Content-Type' => 'application/json', 'X-Test-Id' => "rand-$i" ],
            body => $MOCK_BODY);
        return $r->{status} == 200 && ($r->{headers}{'x-llm-variant'} // '') =~ m{^split/[abc]$}
            ? '' : "status $r->{status}, X-LLM-Variant " . ($r->{headers}{'x-llm-variant'} // '(none)');
    });
    ok(!@fail, 'empty key: every request answered with a variant') or diag(join "\n", @fail[0 .. 4]);
    my @l = grep { $_->{id} =~ /^rand-/ }
            map { parse_log_line($_) } $t->wait_access_log('split.log', $NKEYS + 115 + $n, 10);
    my %c;
    $c{$_->{variant}}++ for @l;
    my @obs = map { $c{$_->[0]} // 0 } @SPLIT;
    is(scalar @l, $n, 'empty key: every request logged');
    cmp_ok(chisq(\@obs, [ shares_expected(scalar @l, @SPLIT) ]), '<', $CHI2_2_999,
           'empty key: random variants in the shares 2:3:5 (chi-square)') or diag("observed @obs");
}

# the status page: the split's variants and their requests

my %split_requests;
{
    my %c;
    $c{$_->{variant}}++ for map { parse_log_line($_) } $t->access_log('split.log');
    %split_requests = %c;
    my $s = exp_status(status(), 'split');
    is($s->{control}, 'b', 'status: split\'s control is the variant marked control');
    is_deeply({ map { $_ => $s->{variants}{$_}{weight} } keys %{$s->{variants} // {}} },
              { a => 2, b => 3, c => 5 }, 'status: split\'s variants and weights');
    is_deeply({ map { $_ => $s->{variants}{$_}{requests} } keys %{$s->{variants} // {}} },
              { map { $_->[0] => $c{$_->[0]} // 0 } @SPLIT },
              'status: split\'s requests per variant, as logged');
    near($s->{mde}, 0.1, 1e-9, 'status: mde 10% by default');
}

# ---------------------------------------------------------------------------
# prompt modes: none, string and array system prompts, OpenAI and Anthropic;
# the forwarded body byte for byte

my %TEXT = (rep => $TEXT_REP, pre => $TEXT_PRE, app => $TEXT_FILE);
my %MODE = (rep => 'replace', pre => 'prepend', app => 'append');

sub inner { my $s = shift; return substr($s, 1, length($s) - 2) }

# the new system string for a mode, from the old string's JSON text
sub new_string {
    my ($mode, $e, $old) = @_;
    return $e if $mode eq 'replace';
    return '"' . inner($e) . '\n\n' . inner($old) . '"' if $mode eq 'prepend';
    return '"' . inner($old) . '\n\n' . inner($e) . '"';
}

sub new_array {
    my ($mode, $e, @parts) = @_;
    return $e if $mode eq 'replace';
    my $part = qq({"type":"text","text":$e});
    return '[' . join(',', $part, @parts) . ']' if $mode eq 'prepend';
    return '[' . join(',', @parts, $part) . ']';
}

my $USER = '{"role":"user","content":"Hi \"there\""}';
my $OLD  = '"Old \"rules\"."';
my @PARTS = ('{"type":"text","text":"Part one."}', '{"type":"text","text":"Part two."}');
my @APARTS = ('{"type":"text","text":"Part one.","cache_control":{"type":"ephemeral"}}',
              '{"type":"text","text":"Part two."}');

# [ name, client body, expected body given (mode, escaped text) ]
my @OPENAI_CASES = (
    [ 'no system message',
      qq({"model": "small","messages":[$USER],"temperature": 0.5\n}),
      sub { qq({"model": "small","messages":[{"role":"system","content":$_[1]},$USER],"temperature": 0.5\n}) } ],
    [ 'a string system message',
      qq({"model": "small","messages":[{"role":"system","content": $OLD},$USER],"n": 1}),
      sub { qq({"model": "small","messages":[{"role":"system","content": ) . new_string($_[0], $_[1], $OLD)
            . qq(},$USER],"n": 1}) } ],
    [ 'an array system message',
      qq({"model": "small","messages":[{"role":"system","content":[$PARTS[0],$PARTS[1]]},$USER]}),
      sub { qq({"model": "small","messages":[{"role":"system","content":) . new_array($_[0], $_[1], @PARTS)
            . qq(},$USER]}) } ],
    [ 'an empty array system message',
      qq({"model": "small","messages":[{"role":"system","content":[]},$USER]}),
      sub { qq({"model": "small","messages":[{"role":"system","content":) . new_array($_[0], $_[1])
            . qq(},$USER]}) } ],
    [ 'a developer message',
      qq({"model":"small","messages":[{"role":"developer","content":$OLD},$USER]}),
      sub { qq({"model":"small","messages":[{"role":"developer","content":) . new_string($_[0], $_[1], $OLD)
            . qq(},$USER]}) } ],
    [ 'a system message with its role after its content',
      qq({"model":"small","messages":[{"content":$OLD,"role":"system"},$USER]}),
      sub { qq({"model":"small","messages":[{"content":) . new_string($_[0], $_[1], $OLD)
            . qq(,"role":"system"},$USER]}) } ],
    [ 'a string system message with escapes',
      qq({"model":"small","messages":[{"role":"system","content":"caf\\u00e9 \\ud83d\\ude00 \\/ end"},$USER]}),
      sub { qq({"model":"small","messages":[{"role":"system","content":)
            . new_string($_[0], $_[1], '"caf\u00e9 \ud83d\ude00 \/ end"') . qq(},$USER]}) } ],
    [ 'a system message that is not the first',
      qq({"model":"small","messages":[$USER,{"role":"system","content":"late"}]}),
      sub { qq({"model":"small","messages":[{"role":"system","content":$_[1]},$USER,{"role":"system","content":"late"}]}) } ],
);

my @ANTHROPIC_CASES = (
    [ 'no system',
      qq({"model":"claude-x","max_tokens": 64,"messages":[$USER]}),
      sub { qq({"system":$_[1],"model":"claude-x","max_tokens": 64,"messages":[$USER]}) } ],
    [ 'a string system',
      qq({"model":"claude-x","system": $OLD,"max_tokens": 64,"messages":[$USER]}),
      sub { qq({"model":"claude-x","system": ) . new_string($_[0], $_[1], $OLD)
            . qq(,"max_tokens": 64,"messages":[$USER]}) } ],
    [ 'an array system',
      qq({"model":"claude-x","system":[$APARTS[0],$APARTS[1]],"max_tokens": 64,"messages":[$USER]}),
      sub { qq({"model":"claude-x","system":) . new_array($_[0], $_[1], @APARTS)
            . qq(,"max_tokens": 64,"messages":[$USER]}) } ],
    [ 'a "system" member nested in a message only',
      qq({"model":"claude-x","max_tokens": 64,"messages":[{"role":"user","content":[{"type":"text","text":"Hi","system":"nested"}]}]}),
      sub { qq({"system":$_[1],"model":"claude-x","max_tokens": 64,"messages":[{"role":"user","content":[{"type":"text","text":"Hi","system":"nested"}]}]}) } ],
    [ 'an empty array system',
      qq({"model":"claude-x","system":[],"max_tokens": 64,"messages":[$USER]}),
      sub { qq({"model":"claude-x","system":) . new_array($_[0], $_[1])
            . qq(,"max_tokens": 64,"messages":[$USER]}) } ],
);

{
    my $n = 0;
    for my $exp (qw(rep pre app)) {
        my ($mode, $e) = ($MODE{$exp}, json_string($TEXT{$exp}));
        for my $fmt ([ 'openai', "/$exp/v1/chat/completions", \@OPENAI_CASES ],
                     [ 'anthropic', "/$exp/claude/v1/messages", \@ANTHROPIC_CASES ])
        {
            my ($fname, $path, $cases) = @$fmt;
            for my $c (@$cases) {
                my ($cname, $body, $want) = @$c;
                my $id = "mode-" . ++$n;
                my $r = post($path, $body, 'X-Test-Id' => $id);
                my $name = "$mode, $fname, $cname";
                is($r->{status}, 200, "$name: 200") or diag($r->{body});
                same_bytes(forwarded($id)->{body}, $want->($mode, $e), "$name: forwarded body");
                same_bytes($r->{body}, fake_body($path, $fname eq 'openai' ? 'small' : 'claude-x'),
                           "$name: the reply is the provider's, unedited");
                is($r->{headers}{'x-llm-variant'}, $exp eq 'rep' ? 'rep/r' : undef,
                   "$name: X-LLM-Variant " . ($exp eq 'rep' ? 'with' : 'without') . ' header on');
            }
        }
    }
}

# mode= by default: replace
{
    my $r = post('/dflt/v1/chat/completions', qq({"model":"small","messages":[{"role":"system","content":$OLD},$USER]}),
                 'X-Test-Id' => 'dflt-1');
    is($r->{status}, 200, 'default mode: 200');
    same_bytes(forwarded('dflt-1')->{body},
               qq({"model":"small","messages":[{"role":"system","content":"Default."},$USER]}),
               'default mode: replace');
}

# a body of 200 KB (buffered to a file by nginx); streams

{
    my $big = 'x' x 200_000;
    my $body = qq({"model":"small","messages":[{"role":"system","content":$OLD},{"role":"user","content":"$big"}]});
    my $r = post('/pre/v1/chat/completions', $body, 'X-Test-Id' => 'big-1');
    is($r->{status}, 200, 'a 200 KB body: 200');
    same_bytes(forwarded('big-1')->{body},
               qq({"model":"small","messages":[{"role":"system","content":)
               . new_string('prepend', json_string($TEXT_PRE), $OLD) . qq(},{"role":"user","content":"$big"}]}),
               'a 200 KB body: prepended, the rest unchanged');
}

sub stream_request {
    my ($path, $body, @h) = @_;
    my $s = LLMTest::HTTP::Stream->open(port => $gw, path => $path, body => $body,
                                        headers => [ 'Content-Type' => 'application/json', @h ]);
    $s->read_all(10);
    return $s;
}

{
    my $body = qq({"model":"small","messages":[$USER],"stream":true});
    my $s = stream_request('/raw/v1/chat/completions', $body, 'X-Test-Id' => 'stream-base');
    is($s->{status}, 200, 'stream: without an experiment: 200');
    my $base = forwarded('stream-base')->{body} // '';
    my $want = $base;
    my $at = index($want, '"messages":[');
    substr($want, $at + length('"messages":['), 0, '{"role":"system","content":' . json_string($TEXT_REP) . '},')
        if $at >= 0;
    $s = stream_request('/rep/v1/chat/completions', $body, 'X-Test-Id' => 'stream-rep');
    is($s->{status}, 200, 'stream: 200');
    ok($s->complete, 'stream: complete');
    is($s->{headers}{'x-llm-variant'}, 'rep/r', 'stream: X-LLM-Variant');
    same_bytes(forwarded('stream-rep')->{body}, $want,
               'stream: the forwarded body is the same as without the experiment, the system message inserted');

    $s = stream_request('/fb/v1/chat/completions', qq({"model":"m","messages":$MSGS,"stream":true}),
                        'X-Test-Id' => 'stream-fb');
    is($s->{status}, 200, 'stream: fb: 200');
    like($s->{headers}{'x-llm-request-id'} // '', qr/^fb\.[ab]\.\d+\.[0-9a-f]{32}\.[0-9a-f]{32}$/,
         'stream: the reply carries X-LLM-Request-Id');
    is(log_of('stream-fb')->{llm_request_id}, $s->{headers}{'x-llm-request-id'}, 'stream: ... as logged');
}

# ---------------------------------------------------------------------------
# parameters: replaced when present, inserted first when absent (only at the
# top level)

sub permutations {
    my @l = @_;
    return ([]) unless @l;
    return map { my $i = $_; map { [ $l[$i], @$_ ] } permutations(@l[grep { $_ != $i } 0 .. $#l]) } 0 .. $#l;
}

sub inserted_first {
    my ($got, $client, @members) = @_;
    return scalar grep { defined $got && $got eq '{' . join(',', @$_) . ',' . substr($client, 1) }
                       permutations(@members);
}

{
    my $body = qq({"model":"small","temperature": 1.5,"top_p":1,"messages":$MSGS,"max_tokens":1000});
    my $r = post('/params/v1/chat/completions', $body, 'X-Test-Id' => 'params-1');
    is($r->{status}, 200, 'params: 200');
    same_bytes(forwarded('params-1')->{body},
               qq({"model":"small","temperature": 0.2,"top_p":0.9,"messages":$MSGS,"max_tokens":50}),
               'params: temperature, top_p and max_tokens replaced in place');

    $body = qq({"model":"small","messages":[{"role":"user","content":"\\"max_tokens\\":7"}],"metadata":{"temperature":"x","top_p":"y"}});
    $r = post('/params/v1/chat/completions', $body, 'X-Test-Id' => 'params-2');
    is($r->{status}, 200, 'params: absent: 200');
    my $got = forwarded('params-2')->{body};
    ok(inserted_first($got, $body, '"temperature":0.2', '"top_p":0.9', '"max_tokens":50'),
       'params: absent members inserted first in the body, nested ones untouched')
        or diag("got: " . ($got // 'undef'));

    $body = qq({"model":"claude-x","max_tokens": 64,"messages":$MSGS});
    $r = post('/params/claude/v1/messages', $body, 'X-Test-Id' => 'params-3');
    is($r->{status}, 200, 'params: anthropic: 200');
    $got = forwarded('params-3')->{body};
    ok(inserted_first($got, qq({"model":"claude-x","max_tokens": 50,"messages":$MSGS}),
                      '"temperature":0.2', '"top_p":0.9'),
       'params: anthropic: max_tokens replaced, temperature and top_p inserted first')
        or diag("got: " . ($got // 'undef'));
}

# system prompt, model and parameters together
{
    my $body = qq({"model":"small","messages":[{"role":"system","content":"Old."},$USER],"max_tokens":100});
    my $r = post('/combo/v1/chat/completions', $body, 'X-Test-Id' => 'combo-1');
    is($r->{status}, 200, 'combined edits: 200');
    same_bytes(forwarded('combo-1')->{body},
               qq({"temperature":0.1,"model":"big-upstream","messages":[{"role":"system","content":"Old.\\n\\nCombo."},$USER],"max_tokens":9}),
               'combined edits: system appended, model, temperature and max_tokens');

    $body = qq({"model":"claude-x","max_tokens": 64,"messages":[$USER]});
    $r = post('/combo/claude/v1/messages', $body, 'X-Test-Id' => 'combo-2');
    is($r->{status}, 200, 'combined edits: anthropic: 200');
    my $got = forwarded('combo-2')->{body};
    ok(inserted_first($got, qq({"model":"big","max_tokens": 9,"messages":[$USER]}),
                      '"system":"Combo."', '"temperature":0.1'),
       'combined edits: anthropic: system and temperature inserted first, model and max_tokens replaced')
        or diag('got: ' . ($got // 'undef'));
    is(log_of('combo-2')->{model}, 'big', 'combined edits: anthropic: $llm_model');
}

# a variant's max_tokens under a limit with clamp: the smaller one is sent
{
    my $body = qq({"model":"small","messages":$MSGS,"max_tokens":5000});
    my $r = post('/limited/v1/chat/completions', $body, 'X-Test-Id' => 'limited-1');
    is($r->{status}, 200, 'limit clamp: 200');
    my $got = forwarded('limited-1')->{body};
    ok(inserted_first($got, qq({"model":"small","messages":$MSGS,"max_tokens":50}),
                      '"temperature":0.2', '"top_p":0.9'),
       'limit clamp: the variant\'s max_tokens 50 is sent, not the clamp') or diag('got: ' . ($got // 'undef'));
    is(log_of('limited-1')->{limit}, 'PASSED', 'limit clamp: the variant\'s max_tokens is what is reserved (PASSED)');
}

# ---------------------------------------------------------------------------
# a control that changes nothing; model and route overrides; the server level

{
    my $body = qq({"model": "small" ,"messages":$MSGS , "temperature":0.7}\n);
    my $r = post('/noop/v1/chat/completions', $body, 'X-Test-Id' => 'noop-1');
    is($r->{status}, 200, 'noop: 200');
    same_bytes(forwarded('noop-1')->{body}, $body, 'noop: a variant without edits forwards the body unchanged');
    ok(!exists $r->{headers}{'x-llm-variant'}, 'noop: no X-LLM-Variant with header off');
    ok(!exists $r->{headers}{'x-llm-request-id'}, 'noop: no X-LLM-Request-Id without secret_file');
    my $l = log_of('noop-1');
    is_deeply([ @$l{qw(experiment variant)} ], [ 'noop', 'same' ], 'noop: $llm_experiment, $llm_variant logged');
    is($l->{llm_request_id}, $l->{request_id}, 'noop: without secret_file $llm_request_id is $request_id');

    $r = post('/raw/v1/chat/completions', qq({"model":"small","messages":$MSGS}), 'X-Test-Id' => 'plain-1');
    is($r->{status}, 200, 'outside experiments: 200');
    $l = log_of('plain-1');
    is_deeply([ @$l{qw(experiment variant)} ], [ '-', '-' ],
              'outside experiments: $llm_experiment and $llm_variant not found');
    near($l->{cost}, 0.0015, 1e-12, 'outside experiments: small priced as small');
}

{
    my $body = qq({"model":"small","messages":$MSGS});
    my $r = post('/mdl/v1/chat/completions', $body, 'X-Test-Id' => 'mdl-1');
    is($r->{status}, 200, 'model override: 200');
    same_bytes(forwarded('mdl-1')->{body}, qq({"model":"big-upstream","messages":$MSGS}),
               'model override: the provider\'s name of the variant\'s model is forwarded');
    my $l = log_of('mdl-1');
    is_deeply([ @$l{qw(model upstream_model variant)} ], [ 'big', 'big-upstream', 'big' ],
              'model override: $llm_model is the variant\'s alias, $llm_upstream_model the provider\'s name');
    near($l->{cost}, 0.02, 1e-12, 'model override: priced as big-upstream (1000 x $10 + 500 x $20 per 1M)');

    $r = post('/mdl/v1/chat/completions', qq({"model":"not-served","messages":$MSGS}), 'X-Test-Id' => 'mdl-2');
    is($r->{status}, 200, 'model override: a model the route does not serve is routed as the variant\'s');
    same_bytes(forwarded('mdl-2')->{body}, qq({"model":"big-upstream","messages":$MSGS}),
               'model override: ... and forwarded with the variant\'s model');

    my $v = exp_status(status(), 'mdl')->{variants}{big} // {};
    is_deeply([ @$v{qw(requests input_tokens output_tokens errors)} ], [ 2, 2000, 1000, 0 ],
              'model override: the variant\'s requests and tokens on the status page');
    near($v->{cost}, 0.04, 1e-12, 'model override: the variant\'s cost on the status page');
    like($v->{cost} // '', qr/^\d+(\.\d+)?$/, 'model override: the cost is a decimal string');
}

{
    my $r = post('/rt/v1/chat/completions', qq({"model":"small","messages":$MSGS}), 'X-Test-Id' => 'rt-1');
    is($r->{status}, 200, 'route override: 200');
    my $f = forwarded('rt-1');
    is($f->{path}, '/alt/v1/chat/completions', 'route override: sent to the route\'s provider');
    is($f->{headers}{authorization}, 'Bearer sk-alt', 'route override: with that provider\'s key');
    same_bytes($f->{body}, qq({"model":"small-alt","messages":$MSGS}),
               'route override: the model as that provider names it');
    my $l = log_of('rt-1');
    is_deeply([ @$l{qw(route provider variant)} ], [ 'alt', 'raw2', 'alt' ], 'route override: logged');
}

{
    my $r = http_request(port => $t->port('GW2'), method => 'POST', path => '/v1/chat/completions',
                         headers => [ 'Content-Type' => 'application/json', 'X-Test-Id' => 'srv-1' ],
                         body => $MOCK_BODY);
    is($r->{status}, 200, 'server level: 200');
    is($r->{headers}{'x-llm-variant'}, 'srv/s', 'server level: the server\'s locations are in the experiment');
}

# ---------------------------------------------------------------------------
# request ids and feedback

my $FB = 0;

# an experiment request; returns (response, id)
sub exp_request {
    my ($path, @h) = @_;
    my $tid = 'fbreq-' . ++$FB;
    my $r = post($path, $MOCK_BODY, 'X-Test-Id' => $tid, @h);
    return ($r, $r->{headers}{'x-llm-request-id'}, $tid);
}

sub feedback {
    my ($body) = @_;
    return http_request(port => $gw, method => 'POST', path => '/v1/feedback',
                        headers => [ 'Content-Type' => 'application/json' ],
                        body => ref $body ? json_encode($body) : $body);
}

sub counted_ok {
    my ($r, $name) = @_;
    ok($r->{status} == 200 && ref $r->{json} eq 'HASH' && ($r->{json}{status} // '') eq 'counted', $name)
        or diag("status $r->{status}: $r->{body}");
}

sub outcomes_of {
    my ($e, $v) = @_;
    my $o = exp_status(status(), $e)->{variants}{$v}{outcomes} // {};
    return [ map { $o->{$_} // 0 } qw(n successes scores) ];
}

my %fbc = (a => [ 0, 0, 0 ], b => [ 0, 0, 0 ]);    # n, successes, scores expected

{
    my ($r, $id, $tid) = exp_request('/fb/v1/chat/completions', 'X-User' => 'fb-user-1');
    is($r->{status}, 200, 'request id: 200');
    my $want = assign_variant('fb', 'fb-user-1', [ a => 1 ], [ b => 1 ]);
    like($id // '', qr/^fb\.[ab]\.\d+\.[0-9a-f]{32}\.[0-9a-f]{32}$/,
         'request id: X-LLM-Request-Id is EXPERIMENT.VARIANT.TIMESTAMP.NONCE.SIG');
    my ($e, $v, $ts, $nonce, $sig) = split /\./, $id // '';
    is($v, $want, 'request id: the variant, as predicted for the key');
    is($r->{headers}{'x-llm-variant'}, "fb/$want", 'request id: the same variant in X-LLM-Variant');
    ok(defined $ts && abs($ts - time) <= 5, 'request id: the timestamp is now');
    is($id, sign_id($SECRET, $e, $v, $ts, $nonce), 'request id: SIG is the HMAC-SHA256 of the rest with the secret');
    my $l = log_of($tid);
    is($l->{llm_request_id}, $id, 'request id: $llm_request_id is the id');
    is($nonce, $l->{request_id}, 'request id: the nonce is $request_id');

    is_deeply(outcomes_of('fb', $v), [ 0, 0, 0 ], 'feedback: no outcomes before feedback');
    my $f = feedback({ request_id => $id, outcome => 1 });
    counted_ok($f, 'feedback: outcome 1 counted');
    $fbc{$v}[0]++; $fbc{$v}[1]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: on the status page (n 1, successes 1)');

    error_ok(feedback({ request_id => $id, outcome => 1 }), 400, 'duplicate_feedback', 'feedback: a replay -> 400 duplicate_feedback');
    error_ok(feedback({ request_id => $id, outcome => 0 }), 400, 'duplicate_feedback', 'feedback: a replay with another outcome too');
    error_ok(feedback({ request_id => $id, score => 3 }), 400, 'duplicate_feedback', 'feedback: a replay as a score too');
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: replays not counted');
}

# the same id from 8 clients at once: counted once
{
    my ($r, $id) = exp_request('/fb/v1/chat/completions');
    my $v = (split /\./, $id // '')[1] // 'a';
    my @res = $t->parallel('dup', 8, 8, sub {
        my $f = feedback({ request_id => $id, outcome => 1 });
        return $f->{status} == 200 ? '' : ($f->{json}{error}{code} // "status $f->{status}");
    });
    my $dups = grep { /duplicate_feedback/ } @res;
    is(scalar @res, 7, 'feedback: the same id sent by 8 clients at once is counted once')
        or diag(join "\n", @res);
    is($dups, 7, 'feedback: ... the 7 others get duplicate_feedback');
    $fbc{$v}[0]++; $fbc{$v}[1]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: ... and the status page counts one');
}

# scores; invalid feedback bodies; the id stays usable after them
{
    my ($r, $id) = exp_request('/fb/v1/chat/completions');
    my $v = (split /\./, $id // '')[1] // 'a';
    counted_ok(feedback({ request_id => $id, score => 4.5 }), 'feedback: a score counted');
    $fbc{$v}[2]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: a score is counted under scores, not n');

    ($r, $id) = exp_request('/fb/v1/chat/completions');
    $v = (split /\./, $id // '')[1] // 'a';
    counted_ok(feedback(qq({ "outcome" : 1 ,\n  "request_id" : "$id" }\n)),
               'feedback: members in another order, with white space');
    $fbc{$v}[0]++; $fbc{$v}[1]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: ... counted');

    ($r, $id) = exp_request('/fb/v1/chat/completions');
    $v = (split /\./, $id // '')[1] // 'a';
    counted_ok(feedback(qq({"request_id":"$id",) . (' ' x 20000) . qq("outcome":0})),
               'feedback: a body of 20 KB (buffered to a file) counted');
    $fbc{$v}[0]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: ... once');

    my $f = feedback('');
    is($f->{status}, 400, 'feedback: an empty body -> 400');
    error_ok(http_request(port => $gw, path => '/v1/feedback'), 405, 'method_not_allowed',
             'feedback: GET -> 405 method_not_allowed');

    ($r, $id) = exp_request('/fb/v1/chat/completions');
    $v = (split /\./, $id // '')[1] // 'a';
    for my $c ([ 'no outcome nor score', qq({"request_id":"$id"}) ],
               [ 'outcome 2', qq({"request_id":"$id","outcome":2}) ],
               [ 'outcome -1', qq({"request_id":"$id","outcome":-1}) ],
               [ 'outcome 0.5', qq({"request_id":"$id","outcome":0.5}) ],
               [ 'outcome "1"', qq({"request_id":"$id","outcome":"1"}) ],
               [ 'outcome true', qq({"request_id":"$id","outcome":true}) ],
               [ 'outcome null', qq({"request_id":"$id","outcome":null}) ],
               [ 'score "high"', qq({"request_id":"$id","score":"high"}) ],
               [ 'score null', qq({"request_id":"$id","score":null}) ],
               [ 'score {}', qq({"request_id":"$id","score":{}}) ],
               [ 'outcome and score', qq({"request_id":"$id","outcome":1,"score":2}) ],
               [ 'outcome twice', qq({"request_id":"$id","outcome":1,"outcome":0}) ])
    {
        error_ok(feedback($c->[1]), 400, 'invalid_feedback', "feedback: $c->[0] -> 400 invalid_feedback");
    }
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: invalid feedback not counted');
    counted_ok(feedback({ request_id => $id, outcome => 0 }),
               'feedback: the id refused for its invalid feedback is counted afterwards');
    $fbc{$v}[0]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: outcome 0 counted (n + 1, successes same)');
}

# forged, malformed, truncated, other-secret, unknown ids
{
    my ($r, $id) = exp_request('/fb/v1/chat/completions');
    my ($e, $v, $ts, $nonce, $sig) = split /\./, $id // 'fb.a.0.0.0';
    my $ov = $v eq 'a' ? 'b' : 'a';
    my $flip = sub { my ($s, $i) = @_; substr($s, $i, 1) = substr($s, $i, 1) eq '0' ? '1' : '0'; $s };
    my @forged = (
        [ 'a signature with one digit changed', join('.', $e, $v, $ts, $nonce, $flip->($sig, 5)) ],
        [ 'the last digit of the signature changed', join('.', $e, $v, $ts, $nonce, $flip->($sig, 31)) ],
        [ 'another variant, same signature', join('.', $e, $ov, $ts, $nonce, $sig) ],
        [ 'another timestamp, same signature', join('.', $e, $v, $ts + 1, $nonce, $sig) ],
        [ 'another nonce, same signature', join('.', $e, $v, $ts, $flip->($nonce, 0), $sig) ],
        [ 'the signature in upper case', join('.', $e, $v, $ts, $nonce, uc $sig) ],
        [ 'a signature of 31 digits', substr($id, 0, -1) ],
        [ 'a signature of 33 digits', "${id}0" ],
        [ 'no signature', join('.', $e, $v, $ts, $nonce) ],
        [ 'no signature, with its dot', join('.', $e, $v, $ts, $nonce) . '.' ],
        [ 'the experiment and variant only', "$e.$v" ],
        [ 'an extra part', "$id.x" ],
        [ 'a nonce of 31 digits', sign_id($SECRET, $e, $v, $ts, substr($nonce, 1)) ],
        [ 'a timestamp that is not a number', sign_id($SECRET, $e, $v, "${ts}x", $nonce) ],
        [ 'signed with another secret', sign_id($SECRET2, $e, $v, $ts, $nonce) ],
        [ 'an unknown experiment', sign_id($SECRET, 'nope', $v, $ts, $nonce) ],
        [ 'an unknown variant', sign_id($SECRET, $e, 'zz', $ts, $nonce) ],
        [ 'an experiment without a secret', sign_id($SECRET, 'noop', 'same', $ts, $nonce) ],
        [ 'the id, a NUL and more', "$id\0x" ],
        [ 'an empty id', '' ],
        [ 'an id of garbage', 'x' x 200 ],
    );
    for my $c (@forged) {
        error_ok(feedback({ request_id => $c->[1], outcome => 1 }), 400, 'invalid_request_id',
                 "feedback: $c->[0] -> 400 invalid_request_id");
    }
    for my $c ([ 'a number', qq({"request_id":5,"outcome":1}) ],
               [ 'null', qq({"request_id":null,"outcome":1}) ],
               [ 'missing', qq({"outcome":1}) ])
    {
        my $f = feedback($c->[1]);
        is($f->{status}, 400, "feedback: request_id $c->[0] -> 400");
        like($f->{json}{error}{code} // '', qr/^invalid_(request_id|feedback)$/,
             "feedback: request_id $c->[0] -> invalid_request_id or invalid_feedback");
    }
    my $esc = $id;
    $esc =~ s/^f/\\u0066/;
    error_ok(feedback(qq({"request_id":"$esc","outcome":1})), 400, 'invalid_request_id',
             'feedback: the id with a letter escaped (\\u0066) -> 400 invalid_request_id');
    my $f = feedback('{"request_id":');
    is($f->{status}, 400, 'feedback: a body that is not JSON -> 400');
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: none of the forged ids counted');
    is_deeply(outcomes_of('fb', $ov), $fbc{$ov}, 'feedback: ... for the other variant either');
    counted_ok(feedback({ request_id => $id, outcome => 1 }), 'feedback: the genuine id is still counted');
    $fbc{$v}[0]++; $fbc{$v}[1]++;
    is_deeply(outcomes_of('fb', $v), $fbc{$v}, 'feedback: ... once');

    # an experiment with its own secret
    my ($ro, $oid) = exp_request('/other/v1/chat/completions');
    my @o = split /\./, $oid // 'other.o.0.0.0';
    is($oid, sign_id($SECRET2, @o[0 .. 3]), 'other secret: the id is signed with the experiment\'s secret');
    error_ok(feedback({ request_id => sign_id($SECRET, @o[0 .. 3]), outcome => 1 }), 400, 'invalid_request_id',
             'other secret: its id signed with the first secret -> 400 invalid_request_id');
    is_deeply(outcomes_of('other', 'o'), [ 0, 0, 0 ], 'other secret: not counted');
    counted_ok(feedback({ request_id => $oid, outcome => 1 }), 'other secret: its genuine id counted');
}

# errors: the id is on every reply of an experiment request; errors counted
{
    my $before = exp_status(status(), 'fb')->{variants} // {};
    my ($r, $id) = exp_request('/fb/v1/chat/completions', 'X-Mock-Status' => 500);
    is($r->{status}, 500, 'errors: the provider\'s 500 is passed');
    like($id // '', qr/^fb\.[ab]\.\d+\.[0-9a-f]{32}\.[0-9a-f]{32}$/, 'errors: the reply carries X-LLM-Request-Id');
    my $v = (split /\./, $id // '')[1] // 'a';
    my $after = exp_status(status(), 'fb')->{variants}{$v} // {};
    is($after->{errors}, ($before->{$v}{errors} // 0) + 1, 'errors: the variant\'s errors + 1');
    is($after->{requests}, ($before->{$v}{requests} // 0) + 1, 'errors: the variant\'s requests + 1');
}

# the gateway's own errors: 502 (the provider cannot be reached), 429 (a limit)
{
    my $before = exp_status(status(), 'fb')->{variants} // {};
    my ($r, $id) = exp_request('/fbdead/v1/chat/completions');
    error_ok($r, 502, 'provider_unavailable', 'gateway error: 502 when the provider cannot be reached');
    like($id // '', qr/^fb\.[ab]\.\d+\.[0-9a-f]{32}\.[0-9a-f]{32}$/, 'gateway error: the 502 carries X-LLM-Request-Id');
    like($r->{headers}{'x-llm-variant'} // '', qr{^fb/[ab]$}, 'gateway error: ... and X-LLM-Variant');
    my $v = (split /\./, $id // '')[1] // 'a';
    is(exp_status(status(), 'fb')->{variants}{$v}{errors}, ($before->{$v}{errors} // 0) + 1,
       'gateway error: the variant\'s errors + 1');

    ($r, $id) = exp_request('/fbonce/v1/chat/completions');
    is($r->{status}, 200, 'limit: the first request passes');
    ($r, $id) = exp_request('/fbonce/v1/chat/completions');
    error_ok($r, 429, 'rate_limit_exceeded', 'limit: the second is refused');
    like($id // '', qr/^fb\.[ab]\.\d+\.[0-9a-f]{32}\.[0-9a-f]{32}$/, 'limit: the 429 carries X-LLM-Request-Id');
}

# the feedback window
{
    my ($r, $id) = exp_request('/fbshort/v1/chat/completions');
    my ($r2, $id2) = exp_request('/fbshort/v1/chat/completions');
    counted_ok(feedback({ request_id => $id, outcome => 1 }), 'window: feedback within the window counted');
    sleep 3;
    error_ok(feedback({ request_id => $id2, outcome => 1 }), 400, 'expired_request_id',
             'window: feedback after feedback_window 2s -> 400 expired_request_id');
    is_deeply(outcomes_of('fbshort', 's'), [ 1, 1, 0 ], 'window: the expired one not counted');
    near(exp_status(status(), 'fbshort')->{mde}, 0.2, 1e-9, 'status: mde 20%');
}

is_deeply({ map { $_ => outcomes_of('fb', $_) } qw(a b) }, \%fbc, 'feedback: the outcomes of fb in total');

# ---------------------------------------------------------------------------
# statistics: 1,000 vs 1,000 outcomes, 10% vs 13%, against values computed
# here: z and lift within 1e-6 (relative), p-values within 1e-4

my (%ab_ids, %ab_requests, $ab_before);
my @SCORES = (a => [ 1, 2, 3, 4, 5.5 ], b => [ 2, 2.5, 7, -1 ]);
my %SCORES = @SCORES;

{
    my $n = 2300;
    my $body = qq({"model":"m-ab","messages":$MSGS});
    my $client;
    my @fail = $t->parallel('ab', $n, 4, sub {
        my ($i) = @_;
        $client //= LLMTest::HTTP::Client->new(port => $gw);
        my $r = $client->request(method => 'POST', path => '/ab/v1/chat/completions',
            headers => [ 'Content-Type' => 'application/json', 'X-Test-Id' => "ab-$i" ], body => $body);
        return $r->{status} == 200 && ($r->{headers}{'x-llm-request-id'} // '') =~ /^ab\.[ab]\./
            ? '' : "status $r->{status}, id " . ($r->{headers}{'x-llm-request-id'} // '(none)');
    });
    ok(!@fail, 'stats: 2,300 requests, each with an id') or diag(join "\n", @fail[0 .. 4]);
    for my $l (map { parse_log_line($_) } $t->wait_access_log('ab.log', $n, 10)) {
        push @{$ab_ids{$l->{variant}}}, $l->{llm_request_id};
        $ab_requests{$l->{variant}}++;
    }
    cmp_ok(scalar @{$ab_ids{$_} // []}, '>=', 1020, "stats: at least 1,020 requests of $_") for qw(a b);

    # outcomes one by one, a and b in turn: a 100 of 1000, b 130 of 1000, all
    # of b's in its first 500 (the sequential p-value is least about then)
    my (@events, @fail2);
    my $c = LLMTest::HTTP::Client->new(port => $gw);
    for my $i (0 .. 999) {
        my $oa = $i % 10 == 0 ? 1 : 0;
        my $ob = $i < 500 && int(($i + 1) * 130 / 500) > int($i * 130 / 500) ? 1 : 0;
        for my $e ([ 0, 'a', $oa ], [ 1, 'b', $ob ]) {
            my $id = $ab_ids{$e->[1]}[$i] // '';
            my $f = $c->request(method => 'POST', path => '/v1/feedback',
                                headers => [ 'Content-Type' => 'application/json' ],
                                body => json_encode({ request_id => $id, outcome => $e->[2] }));
            push @fail2, "$id: $f->{status} $f->{body}" unless $f->{status} == 200;
            push @events, [ $e->[0], $e->[2] ];
        }
    }
    ok(!@fail2, 'stats: 2,000 outcomes counted') or diag(join "\n", @fail2[0 .. 4]);
    for my $v (qw(a b)) {
        my $k = 1000;
        for my $s (@{$SCORES{$v}}) {
            my $id = $ab_ids{$v}[$k++] // '';
            counted_ok(feedback(qq({"request_id":"$id","score":$s})), "stats: score $s for $v counted");
        }
    }

    my $st = exp_status(status(), 'ab');
    is($st->{control}, 'a', 'stats: the control');
    near($st->{mde}, 0.1, 1e-9, 'stats: mde 0.1');
    my %o = (a => [ 100, 1000 ], b => [ 130, 1000 ]);
    for my $v (qw(a b)) {
        my $s = $st->{variants}{$v} // {};
        my $req = $ab_requests{$v} // 0;
        is($s->{weight}, 1, "stats: $v: weight");
        is($s->{requests}, $req, "stats: $v: requests ($req)");
        is($s->{errors}, 0, "stats: $v: errors");
        is($s->{input_tokens}, 3 * $req, "stats: $v: input_tokens");
        is($s->{output_tokens}, $MOCK_OUT * $req, "stats: $v: output_tokens");
        near($s->{cost}, $req * (3 * 1 + $MOCK_OUT * 2) / 1e6, 1e-12, "stats: $v: cost");
        my $lat = $s->{latency_ms} // {};
        ok(defined $lat->{p50} && defined $lat->{p95} && $lat->{p50} >= 0 && $lat->{p50} <= $lat->{p95},
           "stats: $v: latency p50 <= p95") or diag(json_encode($lat));
        my $out = $s->{outcomes} // {};
        is_deeply([ @$out{qw(n successes scores)} ], [ $o{$v}[1], $o{$v}[0], scalar @{$SCORES{$v}} ],
                  "stats: $v: outcomes n, successes, scores");
        near($out->{rate}, $o{$v}[0] / $o{$v}[1], 1e-9, "stats: $v: rate");
        my @sc = @{$SCORES{$v}};
        my $mean = 0;
        $mean += $_ / @sc for @sc;
        my $ss = 0;
        $ss += ($_ - $mean) ** 2 for @sc;
        near($out->{score_mean}, $mean, 1e-6, "stats: $v: score_mean");
        near($out->{score_sd}, sqrt($ss / (@sc - 1)), 1e-6, "stats: $v: score_sd (sample standard deviation)");
    }
    ok(!defined $st->{variants}{a}{vs_control}, 'stats: no vs_control on the control');

    my $vs = $st->{variants}{b}{vs_control} // {};
    my ($z, $p) = ztest(100, 1000, 130, 1000);
    my ($lift, $lo, $hi) = lift_ci(100, 1000, 130, 1000);
    my $need = sample_needed(0.1, 0.1, 1000, 1000);
    my $ps = msprt_p(0.1, @events);
    diag(sprintf "expected: z %.6f p %.6f lift %.6f [%.6f, %.6f] sample_needed %d p_sequential %.6f",
                 $z, $p, $lift, $lo, $hi, $need, $ps) if $ENV{LLM_TEST_VERBOSE};
    near($vs->{z}, $z, 1e-6, 'stats: z of the two-proportion test (pooled)');
    near($vs->{p_value}, $p, 1e-4, 'stats: two-sided p-value');
    near($vs->{lift}, $lift, 1e-6, 'stats: lift');
    near(ref $vs->{lift_ci95} eq 'ARRAY' ? $vs->{lift_ci95}[0] : undef, $lo, 1e-6, 'stats: lift 95% interval, low');
    near(ref $vs->{lift_ci95} eq 'ARRAY' ? $vs->{lift_ci95}[1] : undef, $hi, 1e-6, 'stats: lift 95% interval, high');
    is($vs->{sample_needed}, $need, "stats: sample_needed ($need)");
    near($vs->{p_sequential}, $ps, 1e-4, 'stats: the sequential (mSPRT) p-value');
    cmp_ok($vs->{p_sequential} // 0, '>=', $vs->{p_value} // 1,
           'stats: the sequential p-value is not below the fixed-horizon one');
    $ab_before = $st;
}

# ---------------------------------------------------------------------------
# reloads: an unchanged experiment keeps its statistics, a changed one starts
# afresh; counted ids stay counted

sub kept {
    my ($st) = @_;
    my %k;
    for my $e (keys %{$st->{experiments} // {}}) {
        for my $v (keys %{$st->{experiments}{$e}{variants} // {}}) {
            my $s = $st->{experiments}{$e}{variants}{$v};
            $k{$e}{$v} = json_encode({ map { $_ => $s->{$_} }
                                       qw(requests errors input_tokens output_tokens cost outcomes vs_control) });
        }
    }
    return \%k;
}

{
    my $before = kept(status());
    ok($t->reload(conf(), wait_old => 1), 'reload: the same configuration');
    my $after = kept(status());
    is_deeply($after, $before, 'reload: every experiment unchanged, every statistic kept');

    my $fid = $ab_ids{a}[0];
    error_ok(feedback({ request_id => $fid, outcome => 1 }), 400, 'duplicate_feedback',
             'reload: an id counted before the reload is still a duplicate');
    counted_ok(feedback({ request_id => $ab_ids{a}[1010], outcome => 1 }),
               'reload: an id given before the reload is counted after it');
}

{
    my $keep = kept(status());
    ok($t->reload(conf(split_b => 6), wait_old => 1), 'reload: split\'s b weighs 6');
    my $st = status();
    my $s = exp_status($st, 'split');
    is_deeply({ map { $_ => $s->{variants}{$_}{weight} } keys %{$s->{variants} // {}} },
              { a => 2, b => 6, c => 5 }, 'reload: the new weights on the status page');
    is_deeply({ map { $_ => $s->{variants}{$_}{requests} } keys %{$s->{variants} // {}} },
              { a => 0, b => 0, c => 0 }, 'reload: the changed experiment starts afresh');
    my $k = kept($st);
    delete $_->{split} for $k, $keep;
    is_deeply($k, $keep, 'reload: the other experiments keep their statistics');

    # the weight-change property on 3,000 of the keys
    my @NEW = ([ a => 2 ], [ b => 6 ], [ c => 5 ]);
    my $n = 3000;
    my %old = map { $_->{user} => $_->{variant} }
              grep { $_->{id} =~ /^split-\d+$/ } map { parse_log_line($_) } $t->access_log('split.log');
    my $client;
    my @fail = $t->parallel('split2', $n, 4, sub {
        my ($i) = @_;
        $client //= LLMTest::HTTP::Client->new(port => $gw);
        my $r = $client->request(method => 'POST', path => '/split/v1/chat/completions',
            headers => [ 'Content-Type' => 'application/json', 'X-User' => "user-$i",
                         'X-Test-Id' => "split2-$i" ],
            body => $MOCK_BODY);
        my $w = assign_variant('split', "user-$i", @NEW);
        my $h = $r->{headers}{'x-llm-variant'} // '(none)';
        return $h eq "split/$w" ? '' : "user-$i: status $r->{status}, $h, predicted split/$w";
    });
    ok(!@fail, 'weight change: each key gets its predicted variant under the new weights')
        or diag(scalar(@fail) . " failures, e.g.:\n" . join("\n", @fail[0 .. ($#fail > 9 ? 9 : $#fail)]));
    my @l;
    wait_for(sub {
        @l = grep { $_->{id} =~ /^split2-/ } map { parse_log_line($_) } $t->access_log('split.log');
        @l >= $n }, 10);
    my (@wrong, $moved, $stayed);
    for my $l (@l) {
        my $o = $old{$l->{user}} // next;
        if ($o eq $l->{variant}) { $stayed++; next }
        $moved++;
        push @wrong, "$l->{user}: $o -> $l->{variant}" if $l->{variant} ne 'b';
    }
    is(scalar @l, $n, 'weight change: every request logged');
    ok(!@wrong, 'weight change: every key that changed variant moved into b, the raised one')
        or diag(scalar(@wrong) . " moved elsewhere:\n" . join("\n", @wrong[0 .. ($#wrong > 9 ? 9 : $#wrong)]));
    my $pmoved = grep { assign_variant('split', "user-$_", @SPLIT) ne assign_variant('split', "user-$_", @NEW) }
                 0 .. $n - 1;
    is($moved // 0, $pmoved, "weight change: as many keys moved as predicted ($pmoved)");
    cmp_ok($moved // 0, '>', 100, 'weight change: keys did move');
}

{
    # ids not yet counted, of fb's variants a and b
    my %spare;
    for (1 .. 40) {
        my ($r, $id) = exp_request('/fb/v1/chat/completions');
        my $v = (split /\./, $id // '')[1] // next;
        $spare{$v} //= $id;
        last if keys %spare == 2;
    }
    my $app_before = exp_status(status(), 'app')->{variants}{x}{requests} // 0;
    cmp_ok($app_before, '>', 0, 'reload: app has requests before its prompt file changes');

    my $keep = kept(status());
    my $TEXT_V3 = "Version 3 \xe2\x80\x94 \"cite\".\n" . ("A long prompt line.\n" x 4000) . "End.";
    $t->write_file('prompt-v2.txt', "$TEXT_V3\n");
    ok($t->reload(conf(split_b => 6, ab_b => ' temperature=0.3', fb_b => 'b2'), wait_old => 1),
       'reload: ab\'s variant b changed, fb\'s b renamed b2, app\'s prompt file rewritten');
    my $st = status();

    my $body = qq({"model":"small","messages":[{"role":"system","content":$OLD},$USER]});
    my $r = post('/app/v1/chat/completions', $body, 'X-Test-Id' => 'app-v3');
    same_bytes(forwarded('app-v3')->{body},
               qq({"model":"small","messages":[{"role":"system","content":)
               . new_string('append', json_string($TEXT_V3), $OLD) . qq(},$USER]}),
               'reload: the rewritten prompt file is used (80 KB, its last line break not part of it)');
    is(exp_status($st, 'app')->{variants}{x}{requests}, 0,
       'reload: a variant whose prompt file changed starts afresh');

    error_ok(feedback({ request_id => $spare{b} // '', outcome => 1 }), 400, 'invalid_request_id',
             'reload: an id of a variant no longer there -> 400 invalid_request_id');
    counted_ok(feedback({ request_id => $spare{a} // '', outcome => 1 }),
               'reload: an id of a variant still there is counted');
    is_deeply(outcomes_of('fb', 'a'), [ 1, 1, 0 ], 'reload: ... to the changed experiment\'s fresh statistics');

    my $ab = exp_status($st, 'ab');
    is_deeply({ map { $_ => [ $ab->{variants}{$_}{requests}, $ab->{variants}{$_}{outcomes}{n} // 0 ] }
                keys %{$ab->{variants} // {}} },
              { a => [ 0, 0 ], b => [ 0, 0 ] }, 'reload: a changed variant: the experiment starts afresh');
    ok(!defined $ab->{variants}{b}{vs_control}, 'reload: ... without a comparison');
    my $k = kept($st);
    delete @$_{qw(ab app fb)} for $k, $keep;
    is_deeply($k, $keep, 'reload: the other experiments keep theirs');
}

# ---------------------------------------------------------------------------
# nginx -t

{
    my $base = <<'CONF';
http {
    llm_zone llm 1m;
    llm_provider p { url http://127.0.0.1:9/v1; }
    llm_route r { provider p; }
    %%EXP%%
    server {
        listen 127.0.0.1:%%PORT_T%%;
        location /v1/ { llm_pass r; %%LOC%% }
    }
}
CONF
    $t->write_file('empty.txt', '');
    $t->write_file('short.txt', "fifteen-bytes-x\n");
    my $nt = sub {
        my ($exp, $loc) = @_;
        my $c = $base;
        $c =~ s/%%EXP%%/$exp/;
        $c =~ s/%%LOC%%/$loc \/\/ 'llm_experiment e;'/e;
        return $t->nginx_t($c);
    };
    my ($rc, $out) = $nt->(q{llm_experiment e { key $http_x_user; variant a 1 control "system=x";
        variant b 3 system_file=%%DIR%%/prompt-v2.txt mode=prepend model=m route=r temperature=0.5 top_p=1 max_tokens=10;
        header on; secret_file %%DIR%%/secret.txt; feedback_window 1h; mde 5%; }});
    is($rc, 0, 'nginx -t: a valid experiment passes') or diag($out);

    my @bad = (
        [ 'a missing system_file', q{llm_experiment e { variant a 1 system_file=%%DIR%%/nope.txt; }}, qr/nope\.txt/ ],
        [ 'an empty system_file', q{llm_experiment e { variant a 1 system_file=%%DIR%%/empty.txt; }}, qr/empty\.txt/ ],
        [ 'an unknown mode', q{llm_experiment e { variant a 1 "system=x" mode=sideways; }}, qr/sideways|mode/ ],
        [ 'weight 0', q{llm_experiment e { variant a 0; }}, qr/weight|"0"/ ],
        [ 'weight -1', q{llm_experiment e { variant a -1; }}, qr/weight|-1/ ],
        [ 'weight abc', q{llm_experiment e { variant a abc; }}, qr/weight|abc/ ],
        [ 'weight 1.5', q{llm_experiment e { variant a 1.5; }}, qr/weight|1\.5/ ],
        [ 'no weight', q{llm_experiment e { variant a; }}, qr/variant|weight|arguments/, undef,
          qr/weight "[^"]+"/ ],
        [ 'no variants', q{llm_experiment e { key $http_x_user; }}, qr/variant/ ],
        [ 'two controls', q{llm_experiment e { variant a 1 control; variant b 1 control; }}, qr/control/ ],
        [ 'an unknown route', q{llm_experiment e { variant a 1 route=nowhere; }}, qr/nowhere/ ],
        [ 'an unknown experiment in a location', q{llm_experiment e { variant a 1; }}, qr/missing/,
          'llm_experiment missing;' ],
        [ 'two variants of one name', q{llm_experiment e { variant a 1; variant a 2; }}, qr/variant|duplicate/ ],
        [ 'an unknown variant option', q{llm_experiment e { variant a 1 colour=red; }}, qr/colour/ ],
        [ 'a missing secret_file', q{llm_experiment e { variant a 1; secret_file %%DIR%%/nosecret.txt; }},
          qr/nosecret\.txt/ ],
        [ 'a bad temperature', q{llm_experiment e { variant a 1 temperature=warm; }}, qr/temperature|warm/ ],
        [ 'mode= without a system prompt', q{llm_experiment e { variant a 1 mode=append; }}, qr/mode/ ],
        [ 'a variant name with a dot', q{llm_experiment e { variant a.b 1; }}, qr/a\.b/ ],
        [ 'an experiment name with a dot', q{llm_experiment e.x { variant a 1; }}, qr/e\.x/ ],
        [ 'a secret shorter than 16 bytes', q{llm_experiment e { variant a 1; secret_file %%DIR%%/short.txt; }},
          qr/short\.txt|16/ ],
        [ 'a bad feedback_window', q{llm_experiment e { variant a 1; feedback_window soon; }}, qr/feedback_window|soon/ ],
    );
    for my $c (@bad) {
        my ($name, $exp, $re, $loc, $not) = @$c;
        my ($rc, $out) = $nt->($exp, $loc);
        isnt($rc, 0, "nginx -t: $name fails");
        like($out, qr/\[emerg\].*$re/, "nginx -t: $name: the error says what") or diag($out);
        unlike($out, $not, "nginx -t: $name: the error quotes no value that is not in the line") if $not;
    }
}

$t->finish;
done_testing;
