package LLMTest;

# Test harness for nginx-llm-gateway: runs /usr/sbin/nginx with the module
# loaded, on free loopback ports, in a temporary directory.
#
#   use LLMTest;
#   my $t = LLMTest->new(workers => 1);
#   $t->run(<<'CONF');
#   http {
#       server { listen 127.0.0.1:%%PORT_GW%%; location /v1/ { llm_pass main; } }
#   }
#   CONF
#   my $r = http_request(port => $t->port('GW'), ...);
#   ...
#   $t->finish;          # stop nginx and check error.log (2 tests)
#   done_testing;
#
# Config templating: %%PORT_NAME%% is replaced by a free port (the same name
# always gives the same port within one test), %%DIR%% by the test directory,
# %%MODULE%% by the module path.  The config may also be a code ref called
# with the LLMTest object.  The harness prepends load_module, worker_processes,
# daemon/pid/error_log, adds an events{} block when missing and, right after
# "http {", temp paths and a default access_log.
#
# Environment: LLM_MODULE (module path; "none" to load no module), NGINX
# (nginx binary, default /usr/sbin/nginx), LLM_TEST_KEEP=1 keeps the
# temporary directory, LLM_TEST_VERBOSE=1 prints the generated config.

use strict;
use warnings;

use Test::More;
use File::Temp ();
use File::Basename qw(dirname);
use File::Spec;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use Cwd qw(abs_path);
use Exporter 'import';

use LLMTest::HTTP qw(:all);
use LLMTest::FakeProvider;

our @EXPORT = (@LLMTest::HTTP::EXPORT_OK, qw(error_ok json_ok mock_text sse_response
    ceil4 wait_for));

# ---------------------------------------------------------------------------
# load: $t->parallel(TAG, TOTAL, PAR, JOB [, DURING]) runs JOB->($i) for
# $i in 0 .. TOTAL-1 in PAR forked clients (JOB returns '' or why it failed)
# while DURING runs in the test process; returns the failures.
# $t->done_count(TAG): the jobs of TAG finished so far.

sub parallel {
    my ($self, $tag, $total, $par, $job, $during) = @_;
    my @kids;
    for my $k (0 .. $par - 1) {
        my $file = "$self->{dir}/client-$tag-$k";
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            open my $fh, '>', $file or POSIX::_exit(1);
            $fh->autoflush(1);
            for (my $i = $k; $i < $total; $i += $par) {
                my $why = eval { $job->($i) } // "died: $@";
                print $fh ($why eq '' ? "ok $i\n" : "fail $i $why\n");
            }
            close $fh;
            POSIX::_exit(0);
        }
        push @kids, [ $pid, $file ];
    }
    $during->() if $during;
    waitpid($_->[0], 0) for @kids;
    my (@fail, $ok);
    for my $k (@kids) {
        open my $fh, '<', $k->[1] or next;
        while (<$fh>) { chomp; /^ok / ? $ok++ : push @fail, $_ }
    }
    push @fail, 'only ' . ($ok // 0) . " of $total jobs reported" if ($ok // 0) + @fail != $total;
    return @fail;
}

sub done_count {
    my ($self, $tag) = @_;
    my $n = 0;
    opendir my $dh, $self->{dir} or return 0;
    for my $f (grep { /^client-\Q$tag\E-/ } readdir $dh) {
        open my $fh, '<', "$self->{dir}/$f" or next;
        $n++ while <$fh>;
    }
    return $n;
}

# nginx reads NGINX from its environment (sockets inherited on a binary
# upgrade, and then it does not daemonize): the binary is taken from it, and
# it is not passed on
our $NGINX = delete $ENV{NGINX} // '/usr/sbin/nginx';
our $MOCK_TEXT = 'This is a mock response from the llm_mock provider of nginx-llm-gateway.';

sub default_module {
    my $root = abs_path(dirname(abs_path(__FILE__)) . '/../..');
    return "$root/build/nginx/objs/ngx_http_llm_module.so";
}

sub module_path { $ENV{LLM_MODULE} // default_module() }

my @INSTANCES;

# run the END blocks (stop nginx and the fake providers) when interrupted;
# a closed stdout (prove | head) must not kill the test before cleanup
my $MAIN_PID = $$;
$SIG{$_} = sub { $$ == $MAIN_PID ? exit 1 : POSIX::_exit(1) } for qw(INT TERM HUP);
$SIG{PIPE} = 'IGNORE';

sub new {
    my ($class, %a) = @_;
    my $module = module_path();
    if ($module ne 'none' && !-f $module) {
        plan skip_all => "module not built: $module (run make build)";
    }
    my $dir = File::Temp::tempdir('llmtest-XXXXXX', TMPDIR => 1,
                                  CLEANUP => $ENV{LLM_TEST_KEEP} ? 0 : 1);
    chmod 0755, $dir;    # workers run as nobody when the tests run as root
    my $self = bless {
        dir => $dir, module => $module, workers => $a{workers} // 1,
        error_level => $a{error_level} // 'info', ports => {}, held => {},
        allow_errors => $a{allow_errors} // [],
    }, $class;
    push @INSTANCES, $self;
    diag("test dir $dir") if $ENV{LLM_TEST_KEEP};
    return $self;
}

sub dir { $_[0]{dir} }

# a free loopback port for NAME (stable within the test)
sub port {
    my ($self, $name) = @_;
    return $self->{ports}{$name} //= do {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                      Proto => 'tcp', Listen => 1, ReuseAddr => 1)
            or die "cannot allocate a port: $!";
        $self->{held}{$s->sockport} = $s;    # hold until used: no duplicates
        $s->sockport;
    };
}

sub release_ports {
    my ($self, @ports) = @_;
    @ports = keys %{$self->{held}} unless @ports;
    close delete $self->{held}{$_} for grep { $self->{held}{$_} } @ports;
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '>', $path or die "$path: $!";
    binmode $fh;
    print $fh $content;
    close $fh;
    return $path;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    my $c = <$fh>;
    return $c // '';
}

# expand placeholders and add the harness preamble
sub render {
    my ($self, $conf, %a) = @_;
    $conf = $conf->($self) if ref $conf eq 'CODE';
    my $dir = $self->{dir};
    $conf =~ s/%%PORT_(\w+?)%%/$self->port($1)/ge;
    $conf =~ s/%%(?:DIR|TESTDIR)%%/$dir/g;
    $conf =~ s/%%MODULE%%/$self->{module}/g;

    my $pre = '';
    $pre .= "load_module $self->{module};\n"
        if $self->{module} ne 'none' && $conf !~ /^\s*load_module\s+\S*ngx_http_llm_module/m;
    $pre .= "worker_processes " . ($a{workers} // $self->{workers}) . ";\n"
        unless $conf =~ /^\s*worker_processes\b/m;
    $pre .= "daemon on;\nmaster_process on;\n" unless $conf =~ /^\s*daemon\b/m;
    $pre .= "pid $dir/nginx.pid;\n" unless $conf =~ /^\s*pid\b/m;
    $pre .= "error_log $dir/error.log $self->{error_level};\n"
        unless $conf =~ /^\s*error_log\b/m;
    $pre .= "events { worker_connections 1024; }\n" unless $conf =~ /^\s*events\b/m;

    my $http = join '', map { "    ${_}_temp_path $dir/tmp_$_;\n" }
        qw(client_body proxy fastcgi uwsgi scgi);
    $http .= "    access_log $dir/access.log;\n";
    $conf =~ s/^(\s*http\s*\{[^\n]*\n)/$1$http/m;
    return $pre . $conf;
}

sub conf_path { "$_[0]{dir}/nginx.conf" }

sub write_config {
    my ($self, $conf, %a) = @_;
    my $text = $self->render($conf, %a);
    $self->write_file('nginx.conf', $text);
    diag($text) if $ENV{LLM_TEST_VERBOSE};
    return $text;
}

# run `nginx -t` on a config: returns (exit code, output = stderr+stdout+error.log)
sub nginx_t {
    my ($self, $conf, %a) = @_;
    my $name = $a{name} // 'test.conf';
    my $text = $self->render($conf, %a);
    my $path = $self->write_file($name, $text);
    my $elog = "$self->{dir}/t-error.log";
    unlink $elog;
    my $out = $self->run_cmd($NGINX, '-t', '-p', "$self->{dir}/", '-c', $path, '-e', $elog);
    my $rc = $? >> 8;
    $out .= $self->read_file($elog);
    return ($rc, $out);
}

sub run_cmd {
    my ($self, @cmd) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return $out;
}

# start nginx with the given config; dies (test failure) when it cannot start
sub run {
    my ($self, $conf, %a) = @_;
    my $text = $self->write_config($conf, %a);
    $self->release_ports;
    unlink "$self->{dir}/nginx.pid";
    my $out = $self->run_cmd($NGINX, '-p', "$self->{dir}/", '-c', $self->conf_path,
                             '-e', "$self->{dir}/error.log");
    my $rc = $? >> 8;
    if ($rc != 0) {
        $self->{start_error} = $out . $self->tail_error_log(20);
        die "nginx failed to start (exit $rc):\n$self->{start_error}\n" unless $a{may_fail};
        return 0;
    }
    my $deadline = time + 10;
    while (!-s "$self->{dir}/nginx.pid") {
        die "nginx did not write its pid file\n" . $self->tail_error_log(20) if time > $deadline;
        sleep 0.02;
    }
    $self->{pid} = $self->read_file('nginx.pid') + 0;
    # wait until every listening port accepts connections
    my @ports = $text =~ /^\s*listen\s+(?:127\.0\.0\.1:|localhost:|\[::1\]:)?(\d+)/mg;
    for my $p (@ports) {
        while (1) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p,
                                          Proto => 'tcp', Timeout => 1);
            if ($s) { close $s; last }
            die "nginx does not accept on port $p\n" . $self->tail_error_log(20)
                if time > $deadline;
            sleep 0.02;
        }
    }
    return 1;
}

sub pid { $_[0]{pid} }

sub running { my $p = $_[0]{pid}; return $p && kill(0, $p) }

sub worker_pids {
    my ($self) = @_;
    my $pid = $self->{pid} or return ();
    my @w;
    opendir my $dh, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh> // next;
        my ($ppid) = $st =~ /\)\s+\S+\s+(\d+)/;
        push @w, $p + 0 if $ppid && $ppid == $pid;
    }
    return sort { $a <=> $b } @w;
}

# reload: optionally with a new config; sends HUP and waits until the new
# workers have started (and, with wait_old => 1, the old ones are gone)
sub reload {
    my ($self, $conf, %a) = @_;
    $self->write_config($conf, %a) if defined $conf;
    my $before = () = $self->error_log =~ /start worker process/g;
    my @old = $self->worker_pids;
    kill 'HUP', $self->{pid} or die "cannot signal nginx: $!";
    my $workers = $a{workers} // $self->{workers};
    my $deadline = time + 10;
    while (1) {
        my $now = () = $self->error_log =~ /start worker process/g;
        last if $now >= $before + $workers;
        if (time > $deadline) {
            diag("reload: new workers did not start\n" . $self->tail_error_log(20));
            return 0;
        }
        sleep 0.02;
    }
    if ($a{wait_old}) {
        while (grep { kill 0, $_ } @old) {
            last if time > $deadline;
            sleep 0.02;
        }
    }
    return 1;
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    my @workers = $self->worker_pids;
    kill 'TERM', $pid;
    my $deadline = time + 10;
    while (kill 0, $pid) {
        waitpid($pid, WNOHANG);
        if (time > $deadline) {
            diag("nginx master $pid did not exit on TERM, killing");
            kill 'KILL', $pid, @workers;
            last;
        }
        sleep 0.02;
    }
    # workers may briefly outlive the master
    $deadline = time + 5;
    while (grep { kill 0, $_ } @workers) {
        last if time > $deadline;
        sleep 0.02;
    }
    $self->{pid} = undef;
}

sub error_log { $_[0]->read_file('error.log') }

sub tail_error_log {
    my ($self, $n) = @_;
    my @l = split /\n/, $self->error_log;
    @l = @l[-$n .. -1] if @l > $n;
    return join "\n", @l;
}

# error.log lines at [alert]/[emerg]/[crit], or about crashed workers,
# except those matching allow_errors patterns
sub bad_log_lines {
    my ($self) = @_;
    my @bad;
    for my $l (split /\n/, $self->error_log) {
        next unless $l =~ /\[(alert|emerg|crit)\]/ || $l =~ /exited on signal/;
        next if grep { $l =~ $_ } @{$self->{allow_errors}};
        push @bad, $l;
    }
    return @bad;
}

sub allow_error { my $self = shift; push @{$self->{allow_errors}}, @_ }

# stop nginx, then check the error log (adds 2 tests: no crashed worker, no
# [alert]/[emerg]/[crit] except patterns given to allow_error())
sub finish {
    my ($self) = @_;
    $self->stop;
    my $log = $self->error_log;
    my @crash = grep { /exited on signal|segmentation|core dumped/i } split /\n/, $log;
    ok(!@crash, 'no worker process crashed') or diag(join "\n", @crash);
    my @bad = grep { !/exited on signal/ } $self->bad_log_lines;
    ok(!@bad, 'no [alert]/[emerg]/[crit] in error.log') or diag(join "\n", @bad[0 .. ($#bad > 20 ? 20 : $#bad)]);
}

# access log lines (file name relative to the test dir)
sub access_log {
    my ($self, $name) = @_;
    return grep { length } split /\n/, $self->read_file($name // 'access.log');
}

# wait until the access log has at least $count lines (log lines are written
# when the request is finalized, possibly just after the client got the
# response); returns the lines
sub wait_access_log {
    my ($self, $name, $count, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    my @l;
    while (1) {
        @l = $self->access_log($name);
        return @l if @l >= $count || time > $deadline;
        sleep 0.02;
    }
}

sub fake_provider {
    my ($self, %a) = @_;
    $self->release_ports($a{port});
    return LLMTest::FakeProvider->new(dir => $self->{dir}, %a);
}

sub DESTROY { }

END {
    my $status = $?;
    if ($$ == $MAIN_PID) {
        for my $t (@INSTANCES) {
            $t->stop if $t->{pid};
        }
    }
    $? = $status;
}

# ---------------------------------------------------------------------------
# assertion helpers

sub ceil4 { my $n = shift; return int(($n + 3) / 4) }

sub mock_text { $MOCK_TEXT }

# error_ok($res, STATUS, CODE, NAME): an OpenAI-style JSON error produced by
# the gateway: status, Content-Type application/json, body
# {"error":{"message":str,"type":str,"param":null|str,"code":CODE}}
sub error_ok {
    my ($res, $status, $code, $name) = @_;
    my @why;
    push @why, "status $res->{status}, expected $status" if ($res->{status} // 0) != $status;
    push @why, "transport error: $res->{error}" if $res->{error};
    my $ct = $res->{headers}{'content-type'} // '';
    push @why, "Content-Type '$ct', expected application/json" if $ct !~ m{^application/json\b}i;
    my $j = json_decode($res->{body});
    if (ref $j ne 'HASH' || ref $j->{error} ne 'HASH') {
        push @why, "body is not {\"error\":{...}}";
    } else {
        my $e = $j->{error};
        push @why, "error.message missing or empty"
            unless defined $e->{message} && !ref $e->{message} && length $e->{message};
        push @why, "error.type missing" unless defined $e->{type} && !ref $e->{type} && length $e->{type};
        push @why, "error.param missing" unless exists $e->{param};
        push @why, "error.param neither null nor string"
            if defined $e->{param} && ref $e->{param};
        push @why, "error.code '" . ($e->{code} // 'null') . "', expected '$code'"
            if defined $code && ($e->{code} // '') ne $code;
    }
    my $ok = ok(!@why, $name);
    if (!$ok) {
        diag(join "\n", @why);
        diag("body: " . substr($res->{body} // '', 0, 500));
    }
    return $ok;
}

sub json_ok {
    my ($res, $name) = @_;
    my $j = json_decode($res->{body});
    ok(ref $j, $name) or diag("not JSON: " . substr($res->{body} // '', 0, 300));
    return $j;
}

# wait_for(sub { ... }, timeout): poll until the code returns true
sub wait_for {
    my ($code, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (1) {
        my $r = $code->();
        return $r if $r;
        return $r if time > $deadline;
        sleep 0.02;
    }
}

# sse_response(events => [...], framing => chunked|length|close) -> wire bytes
sub sse_response {
    my (%a) = @_;
    return LLMTest::FakeProvider::http_response(
        status => 200,
        headers => [ 'Content-Type' => 'text/event-stream', 'Cache-Control' => 'no-cache' ],
        body => join('', @{$a{events}}),
        chunks => $a{chunks} // $a{events},
        framing => $a{framing} // 'chunked',
        keepalive => $a{keepalive},
    );
}

1;
