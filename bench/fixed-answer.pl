#!/usr/bin/perl
# The gateway's own cost.  bench.pl puts the mock Azure member behind both
# sides; the mock is an httpd module and costs more per call than the
# gateway, so it hides what the gateway itself adds.  Here the member is
# nginx with one worker answering every call with a fixed chat.completion
# (`return 200`, ~700 bytes, the headers Azure sends): cheaper than either
# gateway, so what is left to see is the gateway.
#
# Each figure runs gateways that are up at once, one balancer each, the
# same MPM and members, differing only in the balancer: mod_aoai_balancer
# with lbmethod=aoai, stock httpd (the module not loaded) with
# lbmethod=byrequests, and a second stock byrequests gateway, the A/A run,
# whose ratio to the first says how much of a difference is noise.  Over 2
# and 64 plain members, and 2 HTTPS members; then a 429 failover (the
# first member always answers 429) against calls sent straight to the
# second member.  wrk (2 threads, 32 keep-alive connections,
# bench/chat.lua's 1 KB POST) takes the sides in turn, round by round, the
# order rotating; each side's figure is its median round.  Then the
# instructions per call, which a shared 2-core machine cannot blur: one
# httpd -X per case under callgrind, the difference between a run of W
# calls (enough to have opened a connection to every member) and one of
# W + N, divided by N, and for aoai where the module's share goes,
# function by function.  Each figure is printed with its target
# (issue 20) and whether it was met.
#
#   perl bench/fixed-answer.pl          10 rounds of 5 s, N = 200 (bench/run)
#   BENCH_SHORT=1 perl bench/fixed-answer.pl   (or --smoke) 3 rounds of 2 s,
#                                       N = 20, as t/12_bench_smoke.t runs it
#   --only load, --only callgrind       one half
#   AOAI_KEEP=1                         keeps the callgrind files (for
#                                       callgrind_annotate) in $TMPDIR
# Everything listens on 127.0.0.1 and is stopped by its PID at the end.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use AOAITLS;
use File::Temp qw(tempdir);
use Getopt::Long;
use Time::HiRes qw(time sleep);

GetOptions('smoke' => \my $smoke, 'only=s' => \my $only)
    or die "usage: bench/fixed-answer.pl [--smoke] [--only load|callgrind]\n";
my %part = map { $_ => !$only || $only eq $_ } qw(load callgrind);
my $short = $smoke || $ENV{BENCH_SHORT};
my $rounds = $short ? 3 : 10;
my $seconds = $short ? 2 : 5;
my $profiled_calls = $short ? 20 : 200;
my $threads = 2;
my $connections = 32;
my $lua = "$FindBin::Bin/chat.lua";
my $path = $CHAT_PATH;

$SIG{INT} = $SIG{TERM} = sub { exit 1 };    # so that the END blocks stop what runs
sub load_average { (split ' ', `cat /proc/loadavg`)[0] }
my $load_at_start = load_average();

# The body bench/chat.lua sends, for the calls made from Perl.
my $chat_body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},'
    . '{"role":"user","content":"Hello! Please tell me the history of the United States, '
    . ('from the first settlements to the present day, ' x 18)
    . 'in a few sentences."}],"max_tokens":16}';

# ---------------------------------------------------------------------
# The fixed-answer members: one nginx, one worker.

# What a chat call gets back, as Azure OpenAI words it.  The remaining
# figures are far above anything these loads take off in a headroom
# window (AOAIHeadroomWindow: 10 s, 60 s), so no member nears its floor and
# the pick takes its everyday path.
my $answer = '{"id":"chatcmpl-AbCdEf0123456789bench0000000","object":"chat.completion",'
    . '"created":1732500000,"model":"gpt-35-turbo","system_fingerprint":"fp_e49e4201a9",'
    . '"choices":[{"index":0,"finish_reason":"stop","logprobs":null,'
    . '"message":{"role":"assistant","content":"The United States grew from thirteen '
    . 'British colonies, declared independence in 1776 and wrote its Constitution in 1787."},'
    . '"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},'
    . '"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,'
    . '"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}],'
    . '"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}],'
    . '"usage":{"prompt_tokens":212,"completion_tokens":16,"total_tokens":228}}';
my $busy = '{"error":{"code":"429","message":"Requests to the ChatCompletions_Create '
    . 'Operation under Azure OpenAI API version 2024-06-01 have exceeded token rate '
    . 'limit of your current OpenAI S0 pricing tier. Please retry after 0 seconds."}}';

my @plain_ports = map { free_port() } 1 .. 64;
my @tls_ports = map { free_port() } 1 .. 2;
my $busy_port = free_port();
my $tls_host = 'fixed.openai.test';
my $ca = AOAITLS->new;
my ($cert, $key) = $ca->issue($tls_host);

my $nginx_dir = tempdir('aoai-bench-fixed-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $nginx_dir;
my $nginx_pid;
{
    my $user = $> == 0 ? "user nobody nogroup;\n" : '';
    my $azure_headers = join '', map { "            add_header $_->[0] $_->[1] always;\n" }
        [ 'apim-request-id' => '8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b' ],
        [ 'x-request-id' => '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0' ],
        [ 'x-ms-region' => '"East US"' ];
    my $location = sub {
        my ($status, $body, @headers) = @_;
        return "        location / {\n            default_type application/json;\n"
             . join('', map { "            add_header $_->[0] $_->[1] always;\n" } @headers)
             . $azure_headers . "            return $status '$body';\n        }\n";
    };
    my $ok = $location->(200, $answer, [ 'x-ratelimit-remaining-requests' => 999999 ],
                         [ 'x-ratelimit-remaining-tokens' => 999999999 ]);
    # A window of 0 ms: over at once, so every call tries this member
    # first again and fails over.
    my $throttled = $location->(429, $busy, [ 'retry-after-ms' => 0 ], [ 'Retry-After' => 0 ]);
    open my $fh, '>', "$nginx_dir/nginx.conf" or die;
    print $fh "${user}worker_processes 1;\nworker_rlimit_nofile 16384;\n"
        . "pid $nginx_dir/nginx.pid;\nerror_log $nginx_dir/error.log warn;\n"
        . "events { worker_connections 8192; }\nhttp {\n    access_log off;\n"
        . "    server_tokens off;\n"
        . join('', map { "    ${_}_temp_path $nginx_dir/$_;\n" } qw(client_body proxy fastcgi uwsgi scgi))
        # connections from the gateways stay open for the whole run
        . "    keepalive_timeout 300s;\n    keepalive_requests 100000000;\n"
        . "    server {\n" . join('', map { "        listen 127.0.0.1:$_;\n" } @plain_ports)
        . $ok . "    }\n"
        . "    server {\n" . join('', map { "        listen 127.0.0.1:$_ ssl;\n" } @tls_ports)
        . "        server_name $tls_host;\n        ssl_certificate $cert;\n"
        . "        ssl_certificate_key $key;\n" . $ok . "    }\n"
        . "    server {\n        listen 127.0.0.1:$busy_port;\n" . $throttled . "    }\n}\n";
    close $fh;
    system('nginx', '-p', $nginx_dir, '-c', "$nginx_dir/nginx.conf") == 0
        or die "nginx did not start";
    wait_until('nginx', 10, sub { -s "$nginx_dir/nginx.pid" });
    open my $pid_fh, '<', "$nginx_dir/nginx.pid" or die;
    chomp($nginx_pid = <$pid_fh>);
}
END {
    if ($nginx_pid) {
        kill 'QUIT', $nginx_pid;
        my $deadline = time + 10;
        sleep 0.05 while time < $deadline && kill 0, $nginx_pid;
        kill 'KILL', $nginx_pid if kill 0, $nginx_pid;
    }
}

# ---------------------------------------------------------------------
# The gateways: AOAITest::Server, with a configuration of their own (one
# access log, unlimited keep-alive requests, as a gateway in front of SDK
# clients runs).

package BenchGateway {
    our @ISA = ('AOAITest::Server');
    sub write_conf {
        my ($self, $body) = @_;
        open my $fh, '>', $self->{conf_file} or die "$self->{conf_file}: $!";
        print $fh main::httpd_conf($self->{dir}, $self->{ports}[0], $self->{modules},
                                   'event', $> == 0), $body;
        close $fh;
    }
}

sub httpd_conf {
    my ($dir, $port, $modules, $mpm, $as_root) = @_;
    my $user = $as_root ? "User nobody\nGroup nogroup\n" : '';
    return <<"EOF" . mpm_block($mpm) . $modules . <<'EOF2';
ServerRoot "$dir"
ServerName 127.0.0.1
PidFile "$dir/httpd.pid"
DefaultRuntimeDir "$dir"
Mutex file:$dir default
ErrorLog "$dir/error_log"
LogLevel warn
${user}Listen 127.0.0.1:$port
KeepAlive On
MaxKeepAliveRequests 0
Timeout 30
EOF
LogFormat "%h %t \"%r\" %>s %D attempts=%{AOAI_ATTEMPTS}e backend=%{AOAI_BACKEND}e" bench
CustomLog "access_log" bench
EOF2
}

# Event for the loads: two processes whose threads can each take every
# connection wrk opens, so that no process runs out of workers and starts
# closing kept-alive connections, and no process is started or stopped
# during a run.  Prefork for callgrind: with -X, one process and no
# listener thread waking on its own.
sub mpm_block {
    my ($mpm) = @_;
    return AOAITest::load_modules('mpm_prefork') if $mpm eq 'prefork';
    return AOAITest::load_modules('mpm_event') . <<'EOF';
StartServers 2
ServerLimit 2
ThreadsPerChild 32
ThreadLimit 32
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
EOF
}

# The modules of a side: the same stock set on both, and mod_aoai_balancer
# only where lbmethod=aoai needs it (or where asked, to see what loading it
# costs the calls of a stock balancer).
sub gateway_modules {
    my ($lbmethod, %o) = @_;
    return AOAITest::load_modules(qw(authz_core proxy proxy_http proxy_balancer
                                     slotmem_shm lbmethod_byrequests),
                                  $o{tls} ? qw(socache_shmcb ssl) : ())
        . ($lbmethod eq 'aoai' || $o{with_module}
           ? "LoadModule aoai_balancer_module " . AOAITest::module_path() . "\n" : '');
}

# One balancer, "fixed", behind /openai.  Members: [ url, lbset, route ].
sub gateway_balancer_conf {
    my ($lbmethod, $members, %o) = @_;
    return ($o{tls} ? "SSLProxyEngine on\nSSLProxyVerify require\nSSLProxyCheckPeerName on\n"
                      . "SSLProxyCACertificateFile " . $ca->file . "\n" : '')
        . "<Proxy balancer://fixed>\n"
        . join('', map { "    BalancerMember $_->[0] lbset=$_->[1] route=$_->[2]\n" } @$members)
        . "    ProxySet lbmethod=$lbmethod\n</Proxy>\n"
        . "ProxyPass /openai balancer://fixed/openai\n";
}

sub start_side {
    my ($name, $lbmethod, $members, %o) = @_;
    return BenchGateway->start(
        name => "bench-fixed-$name", ports => [ free_port() ],
        modules => gateway_modules($lbmethod, %o), loglevel => 'warn',
        conf => gateway_balancer_conf($lbmethod, $members, %o), sanitize => 0,
        hosts => $o{tls} ? [$tls_host] : undef);
}

# Stops a scenario's gateways, and keeps what their error logs say at
# level error or worse (a crash, a member that failed): a throughput
# figure means little if a side lost calls on the way.
my @log_problems;
sub stop_sides {
    my ($label, %gw) = @_;
    for my $side (sort keys %gw) {
        $gw{$side}->stop;
        my @bad = grep { /:(?:error|crit|alert|emerg)\]|exit signal/ } split /\n/, $gw{$side}->error_log;
        next unless @bad;
        push @log_problems, sprintf '%s %s: %d (%s)', $label, $side, scalar @bad, $bad[0] =~ s/\|/\\|/gr;
        print STDERR "  $label $side error_log:\n", map { "    $_\n" } @bad[0 .. ($#bad < 4 ? $#bad : 4)];
    }
}

sub members {
    my ($scheme, $host, @ports) = @_;
    my $i = 0;
    return [ map { [ "$scheme://$host:$_", 0, 'm' . $i++ ] } @ports ];
}

# ---------------------------------------------------------------------
# Load, and the figures of a comparison.

sub wrk {
    my ($url, $secs, $clients) = @_;
    my ($t, $c) = $clients ? (1, $clients) : ($threads, $connections);
    my $out = `wrk -t$t -c$c -d${secs}s --latency -s $lua '$url' 2>&1`;
    my ($rps) = $out =~ /Requests\/sec:\s+([\d.]+)/;
    my %pct;
    while ($out =~ /^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$/mg) {
        $pct{$1} = $2 * ($3 eq 'us' ? 0.001 : $3 eq 's' ? 1000 : 1);
    }
    die "wrk failed:\n$out" unless defined $rps && defined $pct{99};
    my ($non2xx) = $out =~ /Non-2xx or 3xx responses:\s+(\d+)/;
    my $socket_errors = 0;
    if ($out =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/) {
        $socket_errors = $1 + $2 + $3 + $4;
    }
    return { rps => $rps, p50 => $pct{50}, p99 => $pct{99},
             non2xx => $non2xx || 0, socket => $socket_errors };
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return @v % 2 ? $v[ $#v / 2 ] : ($v[ @v / 2 - 1 ] + $v[ @v / 2 ]) / 2;
}

# Rounds over the sides (name => url) in an order that rotates, so that no
# side always runs first after the others; returns, per side, the median
# of each figure and the rounds themselves.  With clients => N, wrk runs
# one thread with N connections instead of the usual load.
sub compare {
    my (@sides) = @_;
    my $clients = $sides[0] eq 'clients' ? (splice @sides, 0, 2)[1] : undef;
    my %url = @sides;
    my @names = @sides[ grep { !($_ % 2) } 0 .. $#sides ];
    wrk("$url{$_}$path", 1, $clients) for @names;    # backend connections opened, caches warm
    my %runs;
    for my $round (0 .. $rounds - 1) {
        my @order = @names[ map { ($_ + $round) % @names } 0 .. $#names ];
        push @{ $runs{$_} }, wrk("$url{$_}$path", $seconds, $clients) for @order;
    }
    my %result;
    for my $name (@names) {
        my @r = @{ $runs{$name} };
        my %errors = (non2xx => 0, socket => 0);
        for my $run (@r) {
            $errors{$_} += $run->{$_} for keys %errors;
        }
        $result{$name} = { (map { my $k = $_; ($k => median(map { $_->{$k} } @r)) } qw(rps p50 p99)),
                           %errors, rounds => \@r };
    }
    return \%result;
}

# Side $x against side $y: the ratio of their median throughputs, the
# differences of their median latencies, and the spread of the per-round
# throughput ratios (both ran in the same round, so the spread is the noise
# a ratio carries here).
sub against {
    my ($r, $x, $y) = @_;
    my @ratios = sort { $a <=> $b }
        map { $r->{$x}{rounds}[$_]{rps} / $r->{$y}{rounds}[$_]{rps} } 0 .. $rounds - 1;
    return { ratio => $r->{$x}{rps} / $r->{$y}{rps}, low => $ratios[0], high => $ratios[-1],
             p50 => $r->{$x}{p50} - $r->{$y}{p50},
             p99 => ($r->{$x}{p99} - $r->{$y}{p99}) / $r->{$y}{p99} };
}

# Calls that failed (a status other than 2xx: the gateway's doing) and
# connections wrk saw closed or reset (now and then, on any side, stock
# byrequests too).
my (@rows, %errors);
sub note_errors {
    my ($label, $r) = @_;
    for my $kind (qw(non2xx socket)) {
        push @{ $errors{$kind} }, "$label $_: $r->{$_}{$kind}" for sort keys %$r;
    }
}
sub row {
    my ($figure, $measured, $target, $met) = @_;
    my $verdict = !defined $met ? '-' : $met ? 'met' : '**not met**';
    push @rows, [ $figure, $measured, $target, $verdict ];
    print STDERR "  $figure: $measured [$target: $verdict]\n";
}
sub side { sprintf '%.0f req/s, p50 %.3f ms, p99 %.2f ms', @{ $_[0] }{qw(rps p50 p99)} }

# aoai, byrequests and the A/A pair over the same members; three rows.
sub overhead_rows {
    my ($label, $members, %o) = @_;
    print STDERR "$label\n";
    my %gw = (aoai => start_side('aoai', 'aoai', $members, %o),
              byreq => start_side('byreq', 'byrequests', $members, %o),
              byreq_b => start_side('byreq-b', 'byrequests', $members, %o));
    my $r = compare(map { ($_ => $gw{$_}->url) } qw(aoai byreq byreq_b));
    stop_sides($label, %gw);
    note_errors($label, $r);
    my $x = against($r, 'aoai', 'byreq');
    my $aa = against($r, 'byreq_b', 'byreq');
    row("$label: throughput",
        sprintf('aoai %s; byrequests %s: aoai/byrequests **%.3f** (rounds %.3f-%.3f); '
                . 'A/A byrequests B %s: %.3f (rounds %.3f-%.3f)',
                side($r->{aoai}), side($r->{byreq}), $x->{ratio}, $x->{low}, $x->{high},
                side($r->{byreq_b}), $aa->{ratio}, $aa->{low}, $aa->{high}),
        '>= 0.97', $x->{ratio} >= 0.97);
    return if $o{throughput_only};
    row("$label: p50",
        sprintf('aoai - byrequests **%+.3f ms**; A/A %+.3f ms', $x->{p50}, $aa->{p50}),
        '<= +0.05 ms', $x->{p50} <= 0.05);
    row("$label: p99",
        sprintf('aoai against byrequests **%+.1f%%**; A/A %+.1f%%', 100 * $x->{p99}, 100 * $aa->{p99}),
        '<= +10%', $x->{p99} <= 0.10);
}

# ---------------------------------------------------------------------
# The wall-clock figures.

sub wall_clock {
    my @two = @plain_ports[0, 1];
    overhead_rows('2 members', members('http', '127.0.0.1', @two));
    overhead_rows('64 members', members('http', '127.0.0.1', @plain_ports));
    overhead_rows('2 HTTPS members', members('https', $tls_host, @tls_ports), tls => 1,
                  throughput_only => 1);

    # 429 failover: every call of "fo" meets a 429 from its first member and is
    # served by the second; "solo" sends every call straight to that second
    # member.  The difference of their p50s is what a failover adds: under
    # the load of the other rows, where a saturated gateway's p50 is mostly
    # its queue (32 connections / throughput), so the figure carries the
    # failover's share of the CPU; and with one connection, where it is the
    # time one call takes longer.
    print STDERR "429 failover\n";
    my %gw = (fo => start_side('fo', 'aoai', [ [ "http://127.0.0.1:$busy_port", 0, 'busy' ],
                                               [ "http://127.0.0.1:$two[0]", 1, 'ok' ] ]),
              solo => start_side('solo', 'aoai', [ [ "http://127.0.0.1:$two[0]", 0, 'ok' ] ]));
    my %logged = (fo => 0, solo => 0);
    for my $clients (undef, 1) {
        my $r = compare($clients ? (clients => $clients) : (), map { ($_ => $gw{$_}->url) } qw(fo solo));
        my $label = $clients ? "$clients connection" : "$connections connections";
        note_errors("failover, $label", $r);
        # the gateways' own logs: how each call of these rounds went, and
        # how long it spent inside the gateway
        my (%took, %how);
        for my $side (qw(fo solo)) {
            my @lines = $gw{$side}->access_log_lines;
            for (@lines[ $logged{$side} .. $#lines ]) {
                my ($status, $us, $attempts) = /" (\d+) (\d+) attempts=(\S+)/ or next;
                $how{$side}{"$status after $attempts attempts"}++;
                push @{ $took{$side} }, $us / 1000 if $status == 200;
            }
            $logged{$side} = @lines;
        }
        my $calls = 0;
        $calls += $_ for values %{ $how{fo} };
        my $failed_over = $how{fo}{'200 after 2 attempts'} // 0;
        my $other = join ', ', map { "$how{fo}{$_} $_" } grep { $_ ne '200 after 2 attempts' }
                                                             sort keys %{ $how{fo} };
        my @diffs = sort { $a <=> $b }
            map { $r->{fo}{rounds}[$_]{p50} - $r->{solo}{rounds}[$_]{p50} } 0 .. $rounds - 1;
        my $added = $r->{fo}{p50} - $r->{solo}{p50};
        row("429 failover, $label: added p50",
            sprintf('first member answers 429 (retry-after-ms 0): %d of %d calls failed over%s; '
                    . 'p50 %.3f ms against %.3f ms straight to the second member: **%+.3f ms** '
                    . '(rounds %+.3f to %+.3f); inside the gateway (%%D, median): %.3f against %.3f ms',
                    $failed_over, $calls, $other ? " ($other)" : '', $r->{fo}{p50}, $r->{solo}{p50},
                    $added, $diffs[0], $diffs[-1], median(@{ $took{fo} || [0] }),
                    median(@{ $took{solo} || [0] })),
            '< 1 ms', $added < 1);
    }
    stop_sides('failover', %gw);
}

wall_clock() if $part{load};

# ---------------------------------------------------------------------
# Instructions per call under callgrind.

my $profile_dir = tempdir('aoai-bench-callgrind-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{AOAI_KEEP});
chmod 0777, $profile_dir;

# One valgrind run of httpd -X (prefork: one process, no listener thread
# waking on its own) serving $count calls on one kept-alive connection;
# returns callgrind's output file.
sub callgrind_run {
    my ($case, $modules, $conf, $count) = @_;
    my $dir = "$profile_dir/$case.$count";
    mkdir $dir or die "$dir: $!";
    chmod 0777, $dir;
    my $port = free_port();
    open my $fh, '>', "$dir/httpd.conf" or die;
    print $fh httpd_conf($dir, $port, $modules, 'prefork', 0), $conf;
    close $fh;
    my $out = "$dir/callgrind.out";
    my $pid = fork // die;
    if (!$pid) {
        open STDERR, '>', "$dir/valgrind.log";
        # as root httpd would switch to its User after valgrind opened its
        # output as root: run both as nobody from the start
        exec(($> == 0 ? ('runuser', '-u', 'nobody', '--') : ()),
             'valgrind', '--tool=callgrind', '--vgdb=no', "--callgrind-out-file=$out",
             '/usr/sbin/apache2', '-X', '-d', $dir, '-f', "$dir/httpd.conf");
    }
    wait_until("httpd under valgrind ($case)", 120, sub {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1) });
    my $server = bless { ports => [$port] }, 'AOAITest::Server';
    my $sock = raw_connect($server);
    for (1 .. $count) {
        my $res = AOAITest::raw_request($sock, body => $chat_body);
        die "$case: call answered $res->{status}\n" unless $res->{status} == 200;
    }
    close $sock;
    # every call logged, so that both runs end at the same point
    wait_until("$case: $count calls logged", 60, sub {
        open my $log, '<', "$dir/access_log" or return 0;
        my $lines = () = <$log>;
        return $lines >= $count;
    });
    open my $pidfile, '<', "$dir/httpd.pid" or die "no pid file: $!";
    chomp(my $httpd = <$pidfile>);
    # httpd itself: runuser does not pass signals on.  Now and then a TERM
    # goes unheeded under valgrind; httpd ignores any after the first it
    # acts on, so asking again is safe.
    my $deadline = time + 120;
    while (waitpid($pid, POSIX::WNOHANG()) == 0) {
        die "$case: httpd under valgrind did not stop\n" if time > $deadline;
        kill 'TERM', $httpd;
        sleep 2;
    }
    die "no callgrind output for $case\n" unless -s $out;
    return $out;
}

# A callgrind output file read into { total, self => { fn => n },
# inclusive => { fn => n } }, each function named "name (object)".  Read
# here rather than through callgrind_annotate, whose listing (3.19) splits a
# function by the source file of the code inlined into it and files what
# its callers spent in it under a separate "???:name" without an object.
# Inclusive is the function's own cost plus what the calls it made cost
# (callgrind writes a call's cost with everything under it).
sub callgrind_profile {
    my ($out) = @_;
    my %space = (ob => 'ob', cob => 'ob', fn => 'fn', cfn => 'fn', jfn => 'fn',
                 map { $_ => 'fl' } qw(fl fi fe cfi cfl jfi));
    my (%name, %self, %called, $total);
    my ($object, $fn, $callee_object, $callee, $call) = ('', '', undef, '', 0);
    open my $in, '<', $out or die "$out: $!";
    while (<$in>) {
        if (/^(\w+)=\((\d+)\)(?: (.*))?$/ && $space{$1}) {
            $name{ $space{$1} }{$2} = $3 if defined $3;
            my $text = $name{ $space{$1} }{$2} // "?$2";
            if    ($1 eq 'ob')  { $object = $text }
            elsif ($1 eq 'cob') { $callee_object = $text }
            elsif ($1 eq 'fn')  { $fn = "$text ($object)" }
            elsif ($1 eq 'cfn') { $callee = "$text (" . ($callee_object // $object) . ')' }
        }
        elsif (/^calls=/) {
            $call = 1;
        }
        elsif (/^(?:[+-]?\d+|\*)\s+(\d+)/) {
            if ($call) {    # the cost of the call announced on the line above
                $called{$fn}{$callee} += $1;
                ($call, $callee_object) = (0, undef);
            }
            else {
                $self{$fn} += $1;
            }
        }
        elsif (/^(?:summary|totals):\s+(\d+)/) {
            $total = $1;
        }
    }
    die "no callgrind total in $out\n" unless $total;
    my %inclusive = %self;
    for my $caller (keys %called) {
        for my $f (keys %{ $called{$caller} }) {
            $inclusive{$caller} += $called{$caller}{$f} unless $f eq $caller;
        }
    }
    return { total => $total, self => \%self, inclusive => \%inclusive };
}

# Per call: what the run of W + N calls spent beyond the run of W, / N.
sub per_call {
    my ($base, $more) = @_;
    my %r = (total => ($more->{total} - $base->{total}) / $profiled_calls);
    for my $kind (qw(self inclusive)) {
        $r{$kind}{$_} = (($more->{$kind}{$_} // 0) - ($base->{$kind}{$_} // 0)) / $profiled_calls
            for keys %{ $more->{$kind} };
    }
    return \%r;
}

my (%ir, %profile);
sub instruction_counts {
    print STDERR "instructions per call (callgrind, $profiled_calls calls)\n";
    my @cases = ([ 'byrequests2', 'byrequests', 2 ], [ 'aoai2', 'aoai', 2 ],
                 [ 'byrequests64', 'byrequests', 64 ], [ 'aoai64', 'aoai', 64 ],
                 [ 'byrequests2+module', 'byrequests', 2, with_module => 1 ]);
    for my $case (@cases) {
        my ($name, $lbmethod, $n, %o) = @$case;
        my $modules = gateway_modules($lbmethod, %o);
        my $conf = gateway_balancer_conf($lbmethod, members('http', '127.0.0.1', @plain_ports[0 .. $n - 1]));
        # the first calls open a connection to each member they reach: two
        # rounds over the members before the calls that count
        my $warm = $n * 2 > 20 ? $n * 2 : 20;
        $profile{$name} = per_call(callgrind_profile(callgrind_run($name, $modules, $conf, $warm)),
                                   callgrind_profile(callgrind_run($name, $modules, $conf,
                                                                   $warm + $profiled_calls)));
        $ir{$name} = $profile{$name}{total};
    }
    for my $n (2, 64) {
        my $x = $ir{"aoai$n"} / $ir{"byrequests$n"};
        my $limit = $n == 2 ? 1.05 : 1.10;
        row("instructions per call, $n members",
            sprintf('aoai %.0f; byrequests %.0f: **%.3fx** (%+.0f per call)',
                    $ir{"aoai$n"}, $ir{"byrequests$n"}, $x, $ir{"aoai$n"} - $ir{"byrequests$n"}),
            sprintf('<= %.2fx', $limit), $x <= $limit);
    }
    row('instructions per call, 2 members, byrequests with mod_aoai_balancer loaded',
        sprintf('%.0f: %.3fx stock byrequests (what loading the module costs a call it does not balance)',
                $ir{'byrequests2+module'}, $ir{'byrequests2+module'} / $ir{byrequests2}),
        'for reading the rows above', undef);
}
instruction_counts() if $part{callgrind};

# ---------------------------------------------------------------------

chomp(my $cpu = `grep -m1 'model name' /proc/cpuinfo | cut -d: -f2`);
my $httpd = (`apache2 -v` =~ /Server version: (\S+)/)[0];
my ($nginx) = `nginx -v 2>&1` =~ m{nginx/(\S+)};
printf "Measured %s on %s, %d cores (1-minute load average %s at the start, %s at the end); "
     . "%s; nginx %s, one worker, a fixed %d-byte chat.completion; wrk -t%d -c%d, %d rounds of "
     . "%d s per side, the order rotating; callgrind over %d calls. Non-2xx answers in the loads: "
     . "%s. Socket errors wrk saw: %s. Error_log lines at level error or worse: %s.\n\n",
    scalar gmtime, $cpu =~ s/^\s+//r, `nproc` + 0, $load_at_start, load_average(), $httpd,
    $nginx, length $answer, $threads, $connections, $rounds, $seconds, $profiled_calls,
    (map { join('; ', @{ $errors{$_} || [] }) || 'none measured' } qw(non2xx socket)),
    @log_problems ? join('; ', @log_problems) : 'none';
print "| figure | measured | target | verdict |\n| --- | --- | --- | --- |\n";
print "| ", join(' | ', @$_), " |\n" for @rows;

profile_tables() if $part{callgrind};

# Where aoai's instructions go: the module's functions by what they cost a
# call with everything they call (inclusive) and by themselves (self); and,
# over the whole process, the functions whose own cost per call differs
# most from stock byrequests at 2 members.
sub profile_tables {
    my $module = qr/ \(\S*mod_aoai_balancer\.so\)$/;
    my ($two, $many) = @profile{qw(aoai2 aoai64)};
    my @top = (sort { $two->{inclusive}{$b} <=> $two->{inclusive}{$a} || $a cmp $b }
               grep { /$module/ && $two->{inclusive}{$_} >= 1 } keys %{ $two->{inclusive} })[0 .. 24];
    printf "\nInstructions per call inside mod_aoai_balancer.so, lbmethod=aoai (whole call: %.0f at "
         . "2 members, %.0f at 64; stock byrequests: %.0f and %.0f), the top %d by inclusive cost at "
         . "2 members:\n\n| function | inclusive, 2 members | self, 2 | inclusive, 64 members | self, 64 |\n"
         . "| --- | --- | --- | --- | --- |\n", @ir{qw(aoai2 aoai64 byrequests2 byrequests64)},
         scalar grep { defined } @top;
    for my $f (grep { defined } @top) {
        printf "| %s | %.0f | %.0f | %.0f | %.0f |\n", $f =~ s/$module//r,
            map { $_ // 0 } $two->{inclusive}{$f}, $two->{self}{$f}, $many->{inclusive}{$f},
            $many->{self}{$f};
    }
    my ($aoai, $stock) = @profile{qw(aoai2 byrequests2)};
    my %names = map { $_ => 1 } keys %{ $aoai->{self} }, keys %{ $stock->{self} };
    my %diff = map { $_ => ($aoai->{self}{$_} // 0) - ($stock->{self}{$_} // 0) } keys %names;
    my @moved = grep { defined } (sort { abs $diff{$b} <=> abs $diff{$a} || $a cmp $b }
                                  grep { abs $diff{$_} >= 50 } keys %diff)[0 .. 19];
    my $shown = 0;
    $shown += $diff{$_} for @moved;
    printf "\nThe whole process, 2 members: the functions whose own (self) instructions per call "
         . "differ most between aoai and stock byrequests (together %+.0f of the %+.0f per call):\n\n"
         . "| function (object) | aoai | byrequests | difference |\n| --- | --- | --- | --- |\n",
         $shown, $ir{aoai2} - $ir{byrequests2};
    for my $f (@moved) {
        printf "| %s | %.0f | %.0f | %+.0f |\n", $f =~ s{\((?:\S*/)?([^/()]+)\)$}{($1)}r,
            $aoai->{self}{$f} // 0, $stock->{self}{$f} // 0, $diff{$f};
    }
}
