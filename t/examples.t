#!/usr/bin/perl
# The example configurations pass `nginx -t`: conf-examples/quickstart.conf
# as the demo loads it, and conf-examples/openai.conf with its provider
# hosts, certificates and paths pointed at the test's own.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLMTest;

my $t = LLMTest->new;
my $root = "$FindBin::Bin/..";
my $dir = $t->dir;
my $module = LLMTest::module_path();

sub slurp { my ($f) = @_; open my $fh, '<', $f or die "$f: $!"; local $/; return <$fh> }

sub nginx_t_file {
    my ($name, $text, %env) = @_;
    my $path = $t->write_file($name, $text);
    local @ENV{keys %env} = values %env;
    mkdir "$dir/$_" for qw(logs tmp);
    my $out = $t->run_cmd($LLMTest::NGINX, '-t', '-p', "$dir/", '-c', $path,
                          '-e', "$dir/t-error.log");
    return ($? >> 8, $out);
}

# quickstart.conf, as tools/demo.sh loads it
{
    my $conf = "load_module $module;\n" . slurp("$root/conf-examples/quickstart.conf");
    $t->write_file('llm-prices.json', slurp("$root/conf-examples/llm-prices.json"));
    $t->write_file('experiment.secret', "0123456789abcdef0123456789abcdef\n");
    my ($rc, $out) = nginx_t_file('quickstart.conf', $conf);
    is($rc, 0, 'conf-examples/quickstart.conf passes nginx -t') or diag($out);
}

# openai.conf: the hosts of the providers are resolved when the configuration
# loads, so they are pointed at 127.0.0.1; certificates and paths are the
# test's own
SKIP: {
    my $crt = "$dir/cert.pem";
    my $key = "$dir/key.pem";
    system("openssl req -x509 -newkey rsa:2048 -nodes -keyout $key -out $crt "
           . "-days 1 -subj /CN=llm.example.com >/dev/null 2>&1") == 0
        or skip('openssl cannot make a certificate', 2);

    my $conf = slurp("$root/conf-examples/openai.conf");
    $conf =~ s{load_module modules/ngx_http_llm_module.so;}{load_module $module;};
    $conf =~ s{^user\s.*$}{}m;
    $conf =~ s{https://api\.(openai|deepseek)\.com/v1}{https://127.0.0.1:9/v1}g;
    $conf =~ s{/etc/letsencrypt/live/llm.example.com/fullchain.pem}{$crt}g;
    $conf =~ s{/etc/letsencrypt/live/llm.example.com/privkey.pem}{$key}g;
    $conf =~ s{/etc/nginx/llm-prices.json}{$root/conf-examples/llm-prices.json}g;
    $conf =~ s{include\s+/etc/nginx/mime.types;}{}g;
    $conf =~ s{/var/log/nginx/}{$dir/logs/}g;
    $conf =~ s{/run/nginx.pid}{$dir/logs/openai.pid}g;
    $conf =~ s{listen\s+(80|443)\b}{'listen 127.0.0.1:' . $t->port("X$1")}ge;

    my ($rc, $out) = nginx_t_file('openai.conf', $conf,
                                  OPENAI_API_KEY => 'sk-test', DEEPSEEK_API_KEY => 'sk-test',
                                      ANTHROPIC_API_KEY => 'sk-test');
    is($rc, 0, 'conf-examples/openai.conf passes nginx -t') or diag($out);
    unlike($out, qr/\[(warn|emerg)\]/, 'without warnings');
}

# the configurations in the README: the synopsis (a whole nginx.conf) and
# the fragments of http{} (put in one)
{
    my $readme = slurp("$root/README.md");
    my @blocks = $readme =~ /^```nginx\n(.*?)^```/msg;
    my $n = 0;

    for my $block (grep { /llm_(provider|route|pass)/ } @blocks) {
        $n++;
        my $conf = $block;
        if ($conf =~ /load_module/) {
            $conf =~ s{load_module modules/ngx_http_llm_module.so;}{load_module $module;\nevents {}};
        } else {
            $conf = "load_module $module;\nevents {}\nhttp {\n$conf\n}\n";
        }
        $conf =~ s{https://api\.[a-z]+\.com/v1}{https://127.0.0.1:9/v1}g;
        $conf =~ s{/etc/nginx/llm-prices.json}{$root/conf-examples/llm-prices.json}g;
        $conf =~ s{/var/log/nginx/}{$dir/logs/}g;
        $conf =~ s{listen\s+(\d+);}{'listen 127.0.0.1:' . $t->port("R$n$1") . ';'}ge;

        my ($rc, $out) = nginx_t_file("readme-$n.conf", $conf,
                                      OPENAI_API_KEY => 'sk-test', DEEPSEEK_API_KEY => 'sk-test',
                                      ANTHROPIC_API_KEY => 'sk-test');
        my ($first) = $block =~ /^\s*(\S[^\n]*)/;
        is($rc, 0, "README configuration $n ($first ...) passes nginx -t") or diag($out);
    }

    cmp_ok($n, '>=', 2, 'the README has the synopsis and the failover example');
}

done_testing;
