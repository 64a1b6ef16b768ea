#!/usr/bin/perl
# Price lookup by request: model names are matched exactly, case included
# (provider model ids are case-sensitive), in llm_price lines and in the
# llm_prices file; model names of any length are priced (a 200-byte name,
# 300-byte keys reached as "provider/name"); a 2,000-model file is priced
# entry by entry.  Each request goes through llm_pass to llm_mock, and the
# $llm_cost of its log line must be the cost at the price of exactly the
# entry of its name, or "-" when no entry has that name.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $LOG = q{log_format c '$http_x_id|$llm_model|$llm_input_tokens|$llm_output_tokens|$llm_cost';};

my $msgs = [ { role => 'user', content => 'What is the price of this?' } ];

# USD as $llm_cost prints it: 12 decimals at most, trailing zeros dropped
sub usd {
    my ($pico) = @_;
    my $s = sprintf('%d', int($pico / 1_000_000_000_000));
    my $frac = $pico % 1_000_000_000_000;
    return $s if $frac == 0;
    (my $f = sprintf('%012d', $frac)) =~ s/0+$//;
    return "$s.$f";
}

# send a request for a model; returns the fields of its log line
my $req = 0;
sub ask {
    my ($t, $path, $model) = @_;
    my $id = 'r' . ++$req;
    my $r = http_request(port => $t->port('GW'), method => 'POST', path => $path,
                         headers => [ 'X-Id' => $id ],
                         body => { model => $model, messages => $msgs }, timeout => 10);
    my $line = wait_for(sub { (grep { /^\Q$id\E\|/ } $t->access_log('gw.log'))[0] }, 5) // '';
    my (undef, $logged, $in, $out, $cost) = split /\|/, $line, -1;
    return { status => $r->{status}, model => $logged // '', in => $in // 0,
             out => $out // 0, cost => $cost // '' };
}

# the request for $model is priced at $in_pico/$out_pico per token (in
# 1e-12 USD), or unpriced when $in_pico is undef
sub priced_ok {
    my ($t, $path, $model, $in_pico, $out_pico, $what) = @_;
    my $a = ask($t, $path, $model);
    is($a->{status}, 200, "$what: the request is answered");
    if (!defined $in_pico) {
        is($a->{cost}, '-', "$what: unpriced (\$llm_cost is \"-\")");
        return;
    }
    cmp_ok($a->{in} + $a->{out}, '>', 0, "$what: the log has the usage");
    is($a->{cost}, usd($a->{in} * $in_pico + $a->{out} * $out_pico),
       "$what: \$llm_cost is the usage at that entry's price");
}

sub started {
    my ($t, $conf, $what) = @_;
    my $ok = $t->run($conf, may_fail => 1);
    ok($ok, "$what: nginx starts") or diag($t->{start_error});
    return $ok;
}

# ---------------------------------------------------------------------------
# mixed case, in the file and in llm_price lines

{
    my $t = LLMTest->new;

    # USD per token; in 1e-12 USD: 2e-06 -> 2_000_000
    $t->write_file('prices.json', <<'JSON');
{
    "Foo-File": {"input_cost_per_token": 2e-06, "output_cost_per_token": 3e-06},
    "Twin-File": {"input_cost_per_token": 5e-06, "output_cost_per_token": 7e-06},
    "twin-file": {"input_cost_per_token": 1.1e-05, "output_cost_per_token": 1.3e-05},
    "GPT-File-MIXED": {"input_cost_per_token": 1.7e-05, "output_cost_per_token": 1.9e-05},
    "lower-file": {"input_cost_per_token": 2.3e-05, "output_cost_per_token": 2.9e-05}
}
JSON

    my $conf = <<"CONF";
http {
    $LOG
    llm_prices %%DIR%%/prices.json;

    # USD per million tokens; in 1e-12 USD: 3 -> 3_000_000
    llm_price Foo-Line input=3 output=5;
    llm_price Twin-Line input=31 output=37;
    llm_price twin-line input=41 output=43;
    llm_price TWIN-LINE input=47 output=53;
    llm_price Lower-File input=59 output=61;

    llm_provider p { url http://127.0.0.1:%%PORT_GW%%/mock/v1; key k; }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log c;
        location /mock/v1/ { access_log off; llm_mock; }
        location /v1/ { llm_pass p; }
    }
}
CONF

    if (started($t, $conf, 'mixed-case price names')) {
        my $P = '/v1/chat/completions';
        my $M = 1_000_000;

        priced_ok($t, $P, 'Foo-File', 2 * $M, 3 * $M, 'file entry "Foo-File", asked as "Foo-File"');
        priced_ok($t, $P, 'foo-file', undef, undef, 'file entry "Foo-File" only, asked as "foo-file"');
        priced_ok($t, $P, 'FOO-FILE', undef, undef, 'file entry "Foo-File" only, asked as "FOO-FILE"');
        priced_ok($t, $P, 'Twin-File', 5 * $M, 7 * $M, 'file entries "Twin-File" and "twin-file": "Twin-File"');
        priced_ok($t, $P, 'twin-file', 11 * $M, 13 * $M, 'file entries "Twin-File" and "twin-file": "twin-file"');
        priced_ok($t, $P, 'TWIN-FILE', undef, undef, 'file entries "Twin-File" and "twin-file": "TWIN-FILE" has none');
        priced_ok($t, $P, 'GPT-File-MIXED', 17 * $M, 19 * $M, 'file entry "GPT-File-MIXED"');

        priced_ok($t, $P, 'Foo-Line', 3 * $M, 5 * $M, 'llm_price "Foo-Line", asked as "Foo-Line"');
        priced_ok($t, $P, 'foo-line', undef, undef, 'llm_price "Foo-Line" only, asked as "foo-line"');
        priced_ok($t, $P, 'Twin-Line', 31 * $M, 37 * $M, 'three llm_price lines differing by case: "Twin-Line"');
        priced_ok($t, $P, 'twin-line', 41 * $M, 43 * $M, 'three llm_price lines differing by case: "twin-line"');
        priced_ok($t, $P, 'TWIN-LINE', 47 * $M, 53 * $M, 'three llm_price lines differing by case: "TWIN-LINE"');
        priced_ok($t, $P, 'twin-Line', undef, undef, 'three llm_price lines differing by case: "twin-Line" has none');

        # an llm_price line replaces the file's entry of the same name only
        priced_ok($t, $P, 'lower-file', 23 * $M, 29 * $M,
                  'file "lower-file" and llm_price "Lower-File": "lower-file" keeps the file price');
        priced_ok($t, $P, 'Lower-File', 59 * $M, 61 * $M,
                  'file "lower-file" and llm_price "Lower-File": "Lower-File" has the line price');
    }

    $t->finish;
}

# ---------------------------------------------------------------------------
# the case from the fuzzer: one priced entry, "claude-opuS-4-20250514"; the
# unpriced "claude-opus-4-20250514" must not take its price

{
    my $t = LLMTest->new;

    $t->write_file('prices.json',
        '{"claude-opuS-4-20250514": {"input_cost_per_token": 1.5e-05, "output_cost_per_token": 7.5e-05}}');

    my $conf = <<"CONF";
http {
    $LOG
    llm_prices %%DIR%%/prices.json;
    llm_provider p { url http://127.0.0.1:%%PORT_GW%%/mock/v1; key k; }
    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log c;
        location /mock/v1/ { access_log off; llm_mock; }
        location /v1/ { llm_pass p; }
    }
}
CONF

    if (started($t, $conf, 'one file entry "claude-opuS-4-20250514"')) {
        my $P = '/v1/chat/completions';
        priced_ok($t, $P, 'claude-opus-4-20250514', undef, undef,
                  '"claude-opus-4-20250514" is not priced by "claude-opuS-4-20250514"');
        priced_ok($t, $P, 'claude-opuS-4-20250514', 15_000_000, 75_000_000,
                  '"claude-opuS-4-20250514" itself is priced');
    }

    $t->finish;
}

# same with the entry in an llm_price line

{
    my $t = LLMTest->new;

    my $conf = <<"CONF";
http {
    $LOG
    llm_price claude-opuS-4-20250514 input=15 output=75;
    llm_provider p { url http://127.0.0.1:%%PORT_GW%%/mock/v1; key k; }
    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log c;
        location /mock/v1/ { access_log off; llm_mock; }
        location /v1/ { llm_pass p; }
    }
}
CONF

    if (started($t, $conf, 'one llm_price line "claude-opuS-4-20250514"')) {
        my $P = '/v1/chat/completions';
        priced_ok($t, $P, 'claude-opus-4-20250514', undef, undef,
                  'llm_price "claude-opuS-4-20250514": "claude-opus-4-20250514" is not priced');
        priced_ok($t, $P, 'claude-opuS-4-20250514', 15_000_000, 75_000_000,
                  'llm_price "claude-opuS-4-20250514": itself is priced');
    }

    $t->finish;
}

# ---------------------------------------------------------------------------
# long names and a big file: a 200-byte name priced by the file and by a
# line; 300-byte keys "provider/name" (a 61-byte provider name, a 238-byte
# model) in the file and in a line; 2,000 more entries in the file

{
    my $t = LLMTest->new;

    my $prov = 'long-provider-' . ('p' x 47);               # 61 bytes
    my $name = sub { my ($c, $len) = @_; substr("Model-$c-" . ($c x $len), 0, $len) };

    my $direct_file = $name->('a', 200);
    my $direct_line = $name->('b', 200);
    my $pref_file   = $name->('c', 238);
    my $pref_line   = $name->('d', 238);
    is(length("$prov/$pref_file"), 300, 'the prefixed keys are 300 bytes');

    my @e;
    push @e, qq("$direct_file": {"input_cost_per_token": 6.7e-05, "output_cost_per_token": 7.1e-05});
    push @e, qq("$prov/$pref_file": {"input_cost_per_token": 7.3e-05, "output_cost_per_token": 7.9e-05});
    push @e, sprintf(qq("bulk-%04d": {"input_cost_per_token": %de-09, "output_cost_per_token": %de-09,)
                     . qq( "litellm_provider": "openai", "mode": "chat", "max_input_tokens": %d}),
                     $_, $_ + 1, 2 * ($_ + 1), 1000 + $_) for 0 .. 1999;
    $t->write_file('prices.json', "{\n    " . join(",\n    ", @e) . "\n}\n");

    my $conf = <<"CONF";
http {
    $LOG
    llm_prices %%DIR%%/prices.json;
    llm_price $direct_line input=83 output=89;
    llm_price $prov/$pref_line input=97 output=101;

    llm_provider p { url http://127.0.0.1:%%PORT_GW%%/mock/v1; key k; }
    llm_provider $prov { url http://127.0.0.1:%%PORT_GW%%/mock/v1; key k; }

    server {
        listen 127.0.0.1:%%PORT_GW%%;
        access_log %%DIR%%/gw.log c;
        location /mock/v1/ { access_log off; llm_mock; }
        location /v1/ { llm_pass p; }
        location /long/v1/ { llm_pass $prov; }
    }
}
CONF

    if (started($t, $conf, 'long model names and a 2,000-model file')) {
        my $M = 1_000_000;
        priced_ok($t, '/v1/chat/completions', $direct_file, 67 * $M, 71 * $M,
                  'a 200-byte name in the file');
        priced_ok($t, '/v1/chat/completions', $direct_line, 83 * $M, 89 * $M,
                  'a 200-byte name in llm_price');
        priced_ok($t, '/long/v1/chat/completions', $pref_file, 73 * $M, 79 * $M,
                  'a 300-byte "provider/name" key in the file');
        priced_ok($t, '/long/v1/chat/completions', $pref_line, 97 * $M, 101 * $M,
                  'a 300-byte "provider/name" key in llm_price');
        priced_ok($t, '/v1/chat/completions', $pref_file, undef, undef,
                  'the 238-byte name through another provider: unpriced');
        for my $i (0, 1, 999, 1234, 1999) {
            priced_ok($t, '/v1/chat/completions', sprintf('bulk-%04d', $i),
                      ($i + 1) * 1000, 2 * ($i + 1) * 1000, sprintf('the file of 2,000 entries: bulk-%04d', $i));
        }
        priced_ok($t, '/v1/chat/completions', 'bulk-2000', undef, undef,
                  'the file of 2,000 entries: bulk-2000 is not in it');
        priced_ok($t, '/v1/chat/completions', 'BULK-0001', undef, undef,
                  'the file of 2,000 entries: BULK-0001 is not in it');
    }

    $t->finish;
}

done_testing;
