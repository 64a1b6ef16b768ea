#!/usr/bin/perl
# Price configuration: `nginx -t` rejects a malformed llm_prices file
# (naming the file, and the model and field when one is at fault) and
# malformed llm_price lines, and accepts valid ones: model names of any
# length, names that differ only by case, token counts up to 2^53.
# t/prices_case.t checks the prices that requests are then given.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;

sub conf {
    my ($http) = @_;
    return <<"CONF";
http {
$http
    llm_provider p { url http://127.0.0.1:9/v1; key k; }
    server { listen 127.0.0.1:%%PORT_A%%; location /v1/ { llm_pass p; } }
}
CONF
}

my $n = 0;

# nginx -t with an llm_prices file of the given content
sub with_file {
    my ($content, $extra) = @_;
    my $path = $t->write_file(sprintf('prices-%02d.json', ++$n), $content);
    my ($rc, $out) = $t->nginx_t(conf("    llm_prices $path;\n" . ($extra // '')));
    return ($rc, $out, $path);
}

my $GOOD_ENTRY = '{"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, '
               . '"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000}';

# ---------------------------------------------------------------------------
# llm_prices: files that must be rejected

my @bad_files = (
    [ 'not JSON',                 '{ this is not json' ],
    [ 'empty file',               '' ],
    [ 'truncated JSON',           qq({"gpt-4o": $GOOD_ENTRY) ],
    [ 'trailing garbage after the object', qq({"gpt-4o": $GOOD_ENTRY} this is not JSON) ],
    [ 'a JSON array, not an object', qq([{"gpt-4o": $GOOD_ENTRY}]) ],
    [ 'a JSON string, not an object', '"gpt-4o"' ],
    [ 'a JSON number, not an object', '42' ],
    [ 'JSON null', 'null' ],
);

for my $c (@bad_files) {
    my ($what, $content) = @$c;
    my ($rc, $out, $path) = with_file($content);
    isnt($rc, 0, "llm_prices, $what: nginx -t fails");
    like($out, qr/\Q$path\E/, "llm_prices, $what: the error names the file") or diag($out);
}

# price fields that must be rejected: [model, field, JSON value]
my @bad_fields = (
    [ 'gpt-4o', 'input_cost_per_token', '"2.5e-06"', 'a string' ],
    [ 'gpt-4o', 'output_cost_per_token', '-1e-05', 'negative' ],
    [ 'gpt-4o', 'input_cost_per_token', '2.5', 'above 1 USD per token' ],
    [ 'claude-3-haiku-20240307', 'cache_read_input_token_cost', '"3e-08"', 'a string' ],
    [ 'claude-3-haiku-20240307', 'cache_creation_input_token_cost', '-3e-07', 'negative' ],
    [ 'o3-mini', 'output_cost_per_reasoning_token', 'true', 'a boolean' ],
    [ 'o3-mini', 'output_cost_per_token', '{"usd": 4.4e-06}', 'an object' ],
    [ 'o3-mini', 'input_cost_per_token', '[1.1e-06]', 'an array' ],
);

for my $c (@bad_fields) {
    my ($model, $field, $value, $what) = @$c;
    my %e = (input_cost_per_token => '1e-06', output_cost_per_token => '2e-06');
    $e{$field} = $value;
    my $entry = '{' . join(', ', map { "\"$_\": $e{$_}" } sort keys %e) . ', "mode": "chat"}';
    my $content = qq({\n  "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat, embedding"},\n)
                . qq(  "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},\n)
                . qq(  "$model": $entry\n}\n);
    my ($rc, $out, $path) = with_file($content);
    isnt($rc, 0, "llm_prices, $field of $model $what: nginx -t fails");
    ok($out =~ /\Q$path\E/ && $out =~ /\Q$field\E/ && $out =~ /\Q$model\E/,
       "llm_prices, $field of $model $what: the error names the file, the field and the model")
        or diag($out);
}

# max_input_tokens and max_output_tokens: a whole number of tokens from 0
# to 2^53, or null; 1e20 and 1e999 (infinity to the parser) were converted
# to integers with undefined behaviour
my @bad_tokens = (
    [ '1e20',                 'too large' ],
    [ '9007199254740994',     'above 2^53' ],
    [ '1e999',                'infinite' ],
    [ '-1e999',               'minus infinity' ],
    [ '-1',                   'negative' ],
    [ '128000.5',             'fractional' ],
    [ '1e-3',                 'a fraction in exponent form' ],
    [ '"128000"',             'a string' ],
    [ 'true',                 'a boolean' ],
    [ '[128000]',             'an array' ],
);

for my $field (qw(max_input_tokens max_output_tokens)) {
    for my $c (@bad_tokens) {
        my ($value, $what) = @$c;
        my $content = qq({"gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},\n)
                    . qq( "claude-3-haiku-20240307": {"input_cost_per_token": 2.5e-07,)
                    . qq( "output_cost_per_token": 1.25e-06, "$field": $value}});
        my ($rc, $out, $path) = with_file($content);
        isnt($rc, 0, "llm_prices, $field $value ($what): nginx -t fails");
        ok($out =~ /\Q$path\E/ && $out =~ /"\Q$field\E"/ && $out =~ /claude-3-haiku-20240307/,
           "llm_prices, $field $value ($what): the error names the file, the field and the model")
            or diag($out);
    }
}

{
    # on an entry without prices too: the file is wrong either way
    my ($rc, $out, $path) = with_file('{"text-embedding-x": {"mode": "embedding", "max_input_tokens": 1e999}}');
    isnt($rc, 0, 'llm_prices, max_input_tokens 1e999 on an unpriced entry: nginx -t fails');
    like($out, qr/text-embedding-x/, 'llm_prices, max_input_tokens 1e999 on an unpriced entry: the error names the model')
        or diag($out);
}

# price fields: infinity and huge values are refused like any price above 1
for my $value ('1e999', '-1e999', '1e300') {
    my ($rc, $out, $path) = with_file(qq({"m": {"input_cost_per_token": $value, "output_cost_per_token": 1e-06}}));
    isnt($rc, 0, "llm_prices, input_cost_per_token $value: nginx -t fails");
    like($out, qr/input_cost_per_token/, "llm_prices, input_cost_per_token $value: the error names the field")
        or diag($out);
}

{
    my $path = $t->dir . '/no-such-prices.json';
    my ($rc, $out) = $t->nginx_t(conf("    llm_prices $path;"));
    isnt($rc, 0, 'llm_prices, a missing file: nginx -t fails');
    like($out, qr/\Q$path\E/, 'llm_prices, a missing file: the error names the file') or diag($out);
}

{
    my $p1 = $t->write_file('dup1.json', '{}');
    my ($rc, $out) = $t->nginx_t(conf("    llm_prices $p1;\n    llm_prices $p1;"));
    isnt($rc, 0, 'llm_prices twice: nginx -t fails');
}

# ---------------------------------------------------------------------------
# llm_prices: files that must be accepted

my @good_files = (
    [ 'the test corpus price file (LiteLLM shape, sample_spec, image and input-only entries)',
      do { open my $fh, '<', "$FindBin::Bin/fixtures/usage-prices.json" or die $!; local $/; <$fh> } ],
    [ 'an empty object', '{}' ],
    [ 'sample_spec with text in price fields is ignored',
      qq({"sample_spec": {"input_cost_per_token": "USD per input token", "output_cost_per_token": "USD per output token"},)
      . qq( "gpt-4o": $GOOD_ENTRY}) ],
    [ 'non-object entries are ignored', qq({"_comment": "prices in USD per token", "version": 3, "gpt-4o": $GOOD_ENTRY}) ],
    [ 'entries without prices are accepted (unpriced)',
      '{"dall-e-3": {"input_cost_per_pixel": 4.0054321e-08, "output_cost_per_pixel": 0.0, "mode": "image_generation"},'
      . ' "only-input": {"input_cost_per_token": 1e-06}}' ],
    [ 'prices of 0 and of exactly 1, decimal and exponent forms',
      '{"free": {"input_cost_per_token": 0, "output_cost_per_token": 0.0},'
      . ' "dear": {"input_cost_per_token": 1, "output_cost_per_token": 1.0},'
      . ' "forms": {"input_cost_per_token": 0.0000025, "output_cost_per_token": 1E-5,'
      . ' "cache_read_input_token_cost": 1.25e-6, "cache_creation_input_token_cost": 3.75e-06,'
      . ' "output_cost_per_reasoning_token": 1e-05}}' ],
    [ 'max_input_tokens and max_output_tokens of 0, null, 2^53 and in exponent form',
      '{"a": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_input_tokens": 0, "max_output_tokens": null},'
      . ' "b": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_input_tokens": 9007199254740992,'
      . ' "max_output_tokens": 1e6},'
      . ' "c": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_input_tokens": 1.048576e6,'
      . ' "max_output_tokens": 65536.0}}' ],
    [ 'model names that differ only by case',
      '{"Foo": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},'
      . ' "foo": {"input_cost_per_token": 3e-06, "output_cost_per_token": 4e-06},'
      . ' "FOO": {"input_cost_per_token": 5e-06, "output_cost_per_token": 6e-06}}' ],
    # model keys longer than 110 bytes stopped nginx with "could not build
    # llm_prices_hash, you should increase llm_prices_hash_bucket_size"
    (map { my $len = $_;
           [ "a model name of $len bytes",
             qq({"short": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},)
             . qq( ") . substr('openrouter/' . ('x' x $len), 0, $len)
             . qq(": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}) ] } (111, 300, 1024, 70000)),
    [ 'a file of 2,000 models, many of long names',
      '{' . join(', ', map { sprintf('"%s-%04d": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,'
                                     . ' "max_input_tokens": 128000, "max_output_tokens": 16384}',
                                     ('provider/family/' . ('m' x ($_ % 250))), $_) } 0 .. 1999) . '}' ],
    [ 'UTF-8 model names and a BOM-less pretty file', qq({\n    "mod\xc3\xa8le-\xe2\x9c\x93": {\n        "input_cost_per_token": 1e-06,\n        "output_cost_per_token": 2e-06\n    }\n}\n) ],
);

for my $c (@good_files) {
    my ($what, $content) = @$c;
    my ($rc, $out) = with_file($content);
    is($rc, 0, "llm_prices, $what: nginx -t passes") or diag($out);
}

{
    my ($rc, $out) = with_file(qq({"gpt-4o": $GOOD_ENTRY}), "    llm_price gpt-4o input=2 output=8;\n");
    is($rc, 0, 'llm_prices and an llm_price line for the same model: nginx -t passes (the line overrides)') or diag($out);
}

# ---------------------------------------------------------------------------
# llm_price lines

# [what, line, what the error must quote]
my @bad_lines = (
    [ 'no output=',                    'llm_price m input=2.5;', qr/output=/ ],
    [ 'no input=',                     'llm_price m output=10;', qr/input=/ ],
    [ 'only cache prices',             'llm_price m cache_read=1 cache_write=2;', qr/input=|output=/ ],
    [ 'no prices at all',              'llm_price m;', qr/llm_price/ ],
    [ 'a word for a price',            'llm_price m input=abc output=10;', qr/input=abc/ ],
    [ '7 decimals',                    'llm_price m input=1.1234567 output=10;', qr/input=1\.1234567/ ],
    [ '7 decimals in cache_read',      'llm_price m input=1 output=10 cache_read=0.0000001;', qr/cache_read=0\.0000001/ ],
    [ 'a negative price',              'llm_price m input=-1 output=10;', qr/input=-1/ ],
    [ 'an exponent',                   'llm_price m input=1e-6 output=10;', qr/input=1e-6/ ],
    [ 'an empty value',                'llm_price m input= output=10;', qr/input=/ ],
    [ 'a decimal comma',               'llm_price m input=2,5 output=10;', qr/input=2,5/ ],
    [ 'two decimal points',            'llm_price m input=1.5.5 output=10;', qr/input=1\.5\.5/ ],
    [ 'a hexadecimal price',           'llm_price m input=0x10 output=10;', qr/input=0x10/ ],
    [ 'a unit suffix',                 'llm_price m input=2.5usd output=10;', qr/input=2\.5usd/ ],
    [ 'an unknown parameter',          'llm_price m input=1 output=2 discount=1;', qr/discount=1/ ],
    [ 'a bad reasoning price',         'llm_price m input=1 output=2 reasoning=x;', qr/reasoning=x/ ],
    [ 'a bad cache_write price',       'llm_price m input=1 output=2 cache_write=-3;', qr/cache_write=-3/ ],
    [ 'above 1 USD per token',         'llm_price m input=1000000.000001 output=2;', qr/input=1000000\.000001/ ],
    [ 'a huge price',                  'llm_price m input=1 output=9000000000000;', qr/output=9000000000000/ ],
    [ 'a price that overflows',        'llm_price m input=99999999999999999999 output=2;', qr/input=99999999999999999999/ ],
    [ 'max_input=0',                   'llm_price m input=1 output=2 max_input=0;', qr/max_input=0/ ],
    [ 'a negative max_input',          'llm_price m input=1 output=2 max_input=-1;', qr/max_input=-1/ ],
    [ 'a fractional max_input',        'llm_price m input=1 output=2 max_input=1.5;', qr/max_input=1\.5/ ],
    [ 'max_input in exponent form',    'llm_price m input=1 output=2 max_input=1e20;', qr/max_input=1e20/ ],
    [ 'max_input above 2^53',          'llm_price m input=1 output=2 max_input=9007199254740993;',
      qr/max_input=9007199254740993/ ],
    [ 'max_input that overflows',      'llm_price m input=1 output=2 max_input=99999999999999999999;',
      qr/max_input=99999999999999999999/ ],
    [ 'an empty max_input',            'llm_price m input=1 output=2 max_input=;', qr/max_input=/ ],
);

for my $c (@bad_lines) {
    my ($what, $line, $re) = @$c;
    my ($rc, $out) = $t->nginx_t(conf("    $line"));
    isnt($rc, 0, "llm_price, $what ($line): nginx -t fails");
    ok($out =~ /\[emerg\].*$re/, "llm_price, $what: the error names the fault") or diag($out);
}

{
    my ($rc, $out) = $t->nginx_t(<<'CONF');
http {
    llm_provider p { url http://127.0.0.1:9/v1; key k; }
    server {
        listen 127.0.0.1:%%PORT_A%%;
        llm_price m input=1 output=2;
        location /v1/ { llm_pass p; }
    }
}
CONF
    isnt($rc, 0, 'llm_price inside server{}: nginx -t fails (http level only)');
}

my @good_lines = (
    'llm_price gpt-4o input=2.5 output=10;',
    'llm_price gpt-4o input=2.5 output=10 cache_read=1.25 cache_write=3.125 reasoning=10;',
    'llm_price free input=0 output=0;',
    'llm_price tiny input=0.000001 output=999999.999999;',
    'llm_price "openai/gpt-4o-mini" input=0.15 output=0.6 cache_read=0.075;',
    'llm_price o3 reasoning=4.4 output=4.4 input=1.1;',
    'llm_price dear input=1000000 output=1000000;',
    'llm_price big input=1 output=2 max_input=9007199254740992;',
    'llm_price ctx input=1 output=2 max_input=128000;',
    # a model name longer than 110 bytes stopped nginx
    'llm_price ' . ('long-' x 60) . 'model input=1 output=2;',
);
for my $line (@good_lines) {
    my ($rc, $out) = $t->nginx_t(conf("    $line"));
    is($rc, 0, "llm_price, valid ($line): nginx -t passes") or diag($out);
}

{
    my ($rc, $out) = $t->nginx_t(conf("    llm_price a input=1 output=2;\n    llm_price b input=3 output=4;"));
    is($rc, 0, 'two llm_price lines for different models: nginx -t passes') or diag($out);
}

{
    my ($rc, $out) = $t->nginx_t(conf("    llm_price Foo input=1 output=2;\n    llm_price foo input=3 output=4;"));
    is($rc, 0, 'llm_price lines for "Foo" and "foo": nginx -t passes (two models)') or diag($out);
    ($rc, $out) = $t->nginx_t(conf("    llm_price Foo input=1 output=2;\n    llm_price Foo input=3 output=4;"));
    isnt($rc, 0, 'two llm_price lines for "Foo": nginx -t fails');
    like($out, qr/duplicate/, 'two llm_price lines for "Foo": the error says duplicate') or diag($out);
}

done_testing;
