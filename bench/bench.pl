#!/usr/bin/perl
# The benchmarks of mod_aoai_balancer against stock mod_proxy_balancer
# (lbmethod=byrequests) on the same httpd, and against nginx, in one run.
# Everything listens on 127.0.0.1 and is stopped at the end; every load is
# bounded in time (wrk -d) or count.
#
#   bench/run                 full run (about 4 minutes)
#   bench/run --smoke         short loads, for CI (about 1 minute)
#
# Prints a Markdown table of the figures; absolute numbers drift on a
# shared 2-core machine, so each comparison is a ratio of runs made side by
# side here, alternating between the two sides.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use AOAITLS;
use File::Temp qw(tempdir);
use Getopt::Long;
use Time::HiRes qw(time sleep);

GetOptions('smoke' => \my $smoke, 'duration=i' => \my $duration,
           'rounds=i' => \my $rounds, 'requests=i' => \my $memory_requests)
    or die "usage: bench/run [--smoke] [--duration S] [--rounds N] [--requests N]\n";
$duration ||= $smoke ? 2 : 8;
$rounds ||= $smoke ? 1 : 3;
$memory_requests ||= $smoke ? 5000 : 100_000;
my $connections = 16;
my $lua = "$FindBin::Bin/chat.lua";
my $path = '/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-06-01';

# ---------------------------------------------------------------------
# The mock farm: h0..h63 for the scale figures, and a few named members.

my @scale = map { "h$_" } 0 .. 63;
my $mock = start_mock(name => 'bench-mock', members => [
    (map { { name => $_ } } @scale, qw(pA pB fo_primary fo_secondary
                                       win_primary win_secondary)),
    { name => 'scen_primary', quota => '20 10000' },
    { name => 'scen_secondary' },
    { name => 'nohr_primary', quota => '20 10000' },
    { name => 'nohr_secondary' },
    { name => 'ngx_primary', quota => '20 10000' },
    { name => 'ngx_secondary' },
    { name => 'fb_slow' }, { name => 'fb_fast' },
    { name => 'shared_primary', quota => '20 10000' }, { name => 'shared_secondary' },
    { name => 'own_primary', quota => '20 10000' }, { name => 'own_secondary' },
    { name => 'fast_primary', quota => '20 10000' }, { name => 'fast_secondary' },
]);
my %url = map { $_ => $mock->member_url($_) } keys %{ $mock->{member_port} };

sub balancer {
    my ($name, $lbmethod, @members) = @_;
    my $conf = "<Proxy balancer://$name>\n";
    $conf .= "    BalancerMember $url{$_->[0]} lbset=$_->[1] route=$_->[0]\n" for @members;
    $conf .= "    ProxySet lbmethod=$lbmethod\n    AOAIThrottleMax 600\n</Proxy>\n"
           . "ProxyPass /$name/openai balancer://$name/openai\n";
    return $conf;
}

my $gw_conf = "AOAIThrottleTableSize 1024\n"
    . balancer('byreq', 'byrequests', [pA => 0], [pB => 0])
    . balancer('aoai', 'aoai', [pA => 0], [pB => 0]);
for my $n (2, 64) {    # stock, for the slope mod_proxy_balancer has itself
    $gw_conf .= balancer("b$n", 'byrequests', map { [ $scale[$_] => 0 ] } 0 .. $n - 1);
}
for my $n (2, 16, 64) {
    $gw_conf .= balancer("m$n", 'aoai', map { [ $scale[$_] => 0 ] } 0 .. $n - 1);
    $gw_conf .= balancer("m${n}half", 'aoai', map { [ $scale[$_] => 0 ] } 0 .. $n - 1);
}
$gw_conf .= balancer('fo', 'aoai', [fo_primary => 0], [fo_secondary => 1])
          . balancer('solo', 'aoai', [fo_secondary => 0])
          . balancer('win', 'aoai', [win_primary => 0], [win_secondary => 1])
          . balancer('scen', 'aoai', [scen_primary => 0], [scen_secondary => 1])
          . balancer('nohr', 'aoai', [nohr_primary => 0], [nohr_secondary => 1])
          . "<Location /nohr>\n    AOAIHeadroomFloor requests off\n"
          . "    AOAIHeadroomFloor tokens off\n</Location>\n"
          . balancer('fb', 'aoai', [fb_slow => 0], [fb_fast => 1])
          . "<Location /fb>\n    AOAIFirstByteTimeout 500ms\n</Location>\n";

my $gw = start_gateway(name => 'bench-gateway', conf => $gw_conf, loglevel => 'warn',
                       mpm => 'event');

# ---------------------------------------------------------------------
# nginx, configured as well as nginx allows for this job.

my $nginx_dir = tempdir('aoai-bench-nginx-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $nginx_dir;
my $nginx_port = free_port();
{
    my ($p0) = $url{pA} =~ /:(\d+)$/;
    my ($p1) = $url{pB} =~ /:(\d+)$/;
    my ($s0) = $url{ngx_primary} =~ /:(\d+)$/;
    my ($s1) = $url{ngx_secondary} =~ /:(\d+)$/;
    my $user = $> == 0 ? "user nobody nogroup;\n" : '';
    open my $fh, '>', "$nginx_dir/nginx.conf" or die;
    print $fh <<"EOF";
${user}worker_processes 2;
pid $nginx_dir/nginx.pid;
error_log $nginx_dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $nginx_dir/body;
    proxy_temp_path $nginx_dir/proxy;
    fastcgi_temp_path $nginx_dir/fastcgi;
    uwsgi_temp_path $nginx_dir/uwsgi;
    scgi_temp_path $nginx_dir/scgi;
    upstream pair { server 127.0.0.1:$p0; server 127.0.0.1:$p1; keepalive 32; }
    # the best nginx can do for the throttle scenario: a backup member, and
    # the primary parked for a fixed time after one failure (nginx cannot
    # read Retry-After)
    upstream scen {
        server 127.0.0.1:$s0 max_fails=1 fail_timeout=10s;
        server 127.0.0.1:$s1 backup;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # non_idempotent: without it nginx never retries a POST elsewhere
        proxy_next_upstream error timeout http_429 http_500 http_502 http_503 non_idempotent;
        location /pair/ { proxy_pass http://pair/; }
        location /scen/ { proxy_pass http://scen/; }
    }
}
EOF
    close $fh;
    system('nginx', '-p', $nginx_dir, '-c', "$nginx_dir/nginx.conf") == 0
        or die "nginx did not start";
    wait_until('nginx', 10, sub { -s "$nginx_dir/nginx.pid" });
}
END {
    if ($nginx_dir && open my $fh, '<', "$nginx_dir/nginx.pid") {
        chomp(my $pid = <$fh>);
        kill 'QUIT', $pid if $pid;
    }
}

# ---------------------------------------------------------------------

sub wrk {
    my ($url, $seconds) = @_;
    my $out = `wrk -t2 -c$connections -d${seconds}s --latency -s $lua '$url' 2>&1`;
    my ($rps) = $out =~ /Requests\/sec:\s+([\d.]+)/;
    my %pct;
    while ($out =~ /^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$/mg) {
        $pct{$1} = $2 * ($3 eq 'us' ? 0.001 : $3 eq 's' ? 1000 : 1);
    }
    my ($non2xx) = $out =~ /Non-2xx or 3xx responses:\s+(\d+)/;
    die "wrk failed:\n$out" unless defined $rps && defined $pct{99};
    return { rps => $rps, p50 => $pct{50}, p99 => $pct{99}, errors => $non2xx || 0 };
}

# Alternate the sides round by round; keep the mean throughput and the
# median of the latency percentiles.
sub compare {
    my (%side) = @_;
    my %runs;
    for my $round (1 .. $rounds) {
        for my $name (sort keys %side) {
            push @{ $runs{$name} }, wrk($side{$name}, $duration);
        }
    }
    my %result;
    for my $name (keys %runs) {
        my @r = @{ $runs{$name} };
        my $median = sub {
            my @v = sort { $a <=> $b } map { $_->{ $_[0] } } @r;
            return $v[ int($#v / 2) ];
        };
        my $sum = 0;
        $sum += $_->{rps} for @r;
        my $errors = 0;
        $errors += $_->{errors} for @r;
        $result{$name} = { rps => $sum / @r, p50 => $median->('p50'),
                           p99 => $median->('p99'), errors => $errors };
    }
    return \%result;
}

my @rows;
sub row { push @rows, [@_]; printf STDERR "  %s\n", join ' | ', @_ }
sub fmt { sprintf '%.0f req/s, p50 %.2f ms, p99 %.2f ms', @{ $_[0] }{qw(rps p50 p99)} }

my $gw_url = $gw->url;
print STDERR "warming up\n";
wrk("$gw_url/aoai$path", 1);
wrk("$gw_url/byreq$path", 1);

# 1. Overhead
print STDERR "1. overhead: byrequests vs aoai vs direct\n";
my $o = compare(byreq => "$gw_url/byreq$path", aoai => "$gw_url/aoai$path",
                direct => "$url{pA}$path", nginx => "http://127.0.0.1:$nginx_port/pair$path");
my $throughput_ratio = $o->{aoai}{rps} / $o->{byreq}{rps};
my $p99_change = ($o->{aoai}{p99} - $o->{byreq}{p99}) / $o->{byreq}{p99} * 100;
row('1. Overhead, 2 healthy members',
    sprintf('byrequests: %s; aoai: %s; direct to the mock: %s',
            fmt($o->{byreq}), fmt($o->{aoai}), fmt($o->{direct})),
    sprintf('aoai/byrequests throughput **%.3f** (target >= 0.97); p99 %+.1f%% (target within 5%%)',
            $throughput_ratio, $p99_change));

# 1b. Overhead with HTTPS members: the same comparison through a second
# gateway whose two members are behind verified TLS (a throwaway CA), and
# how many handshakes the members saw for all those calls.
print STDERR "1b. overhead with HTTPS members\n";
my $ca = AOAITLS->new;
my $tls_mock = start_mock(name => 'bench-tls-mock', members => [
    map { { name => $_, tls => [ $ca->issue("$_.openai.test") ] } } qw(ta tb) ]);
my %tls_member = map { $_ => $tls_mock->member_https_url($_, "$_.openai.test") } qw(ta tb);
my $tls_conf = "SSLProxyEngine on\nSSLProxyVerify require\nSSLProxyCheckPeerName on\n"
             . "SSLProxyCACertificateFile " . $ca->file . "\n";
for my $lb ([ tbyreq => 'byrequests' ], [ taoai => 'aoai' ]) {
    $tls_conf .= "<Proxy balancer://$lb->[0]>\n"
               . join('', map { "    BalancerMember $tls_member{$_} lbset=0 route=$_\n" } qw(ta tb))
               . "    ProxySet lbmethod=$lb->[1]\n</Proxy>\n"
               . "ProxyPass /$lb->[0]/openai balancer://$lb->[0]/openai\n";
}
my $tls_gw = start_gateway(name => 'bench-tls-gateway', conf => $tls_conf, loglevel => 'warn',
                           mpm => 'event', tls => 1, hosts => [ map { "$_.openai.test" } qw(ta tb) ]);
my $tls_gw_url = $tls_gw->url;
wrk("$tls_gw_url/$_$path", 1) for qw(taoai tbyreq);
my $t = compare(tbyreq => "$tls_gw_url/tbyreq$path", taoai => "$tls_gw_url/taoai$path");
my ($handshakes, $tls_calls) = (0, 0);
for my $member (qw(ta tb)) {
    my $stats = $tls_mock->stats($member);
    $handshakes += $stats->{connections};
    $tls_calls += $stats->{requests};
}
row('1b. Overhead, 2 HTTPS members',
    sprintf('byrequests: %s; aoai: %s; the members saw %d TLS handshakes for %d calls',
            fmt($t->{tbyreq}), fmt($t->{taoai}), $handshakes, $tls_calls),
    sprintf('aoai/byrequests throughput **%.3f** (target >= 0.97); p99 %+.1f%% (target within 5%%); connections reused: %.0f calls per handshake',
            $t->{taoai}{rps} / $t->{tbyreq}{rps},
            ($t->{taoai}{p99} - $t->{tbyreq}{p99}) / $t->{tbyreq}{p99} * 100,
            $tls_calls / ($handshakes || 1)));
$tls_gw->stop;
$tls_mock->stop;

# 2. Scale in members
print STDERR "2. scale: 2, 16, 64 members, healthy and half throttled\n";
for my $n (2, 16, 64) {
    my @throttled = @scale[ grep { $_ % 2 } 0 .. $n - 1 ];
    $mock->control($_, { force_status => 429, force_count => 1,
                         retry_after_ms => 600_000 }) for @throttled;
    # Each to-be-throttled member answers one 429 through m${n}half.
    my $tries = 0;
    while (grep { ($mock->stats($_)->{status}{429} || 0) < 1 } @throttled) {
        chat($gw, path => "/m${n}half$path");
        die "could not throttle half of m$n" if ++$tries > 10 * $n;
    }
}
my $s = compare((map { ("m$_" => "$gw_url/m$_$path", "m${_}half" => "$gw_url/m${_}half$path") } 2, 16, 64),
                map { ("b$_" => "$gw_url/b$_$path") } 2, 64);
my $change = sub { ($s->{ $_[1] }{rps} - $s->{ $_[0] }{rps}) / $s->{ $_[0] }{rps} * 100 };
row('2. Scale in members',
    join('; ', map { sprintf('%s: %.0f req/s', $_, $s->{$_}{rps}) }
               qw(m2 m16 m64 m2half m16half m64half b2 b64))
    . ' (mN: aoai over N members, mNhalf: half of them throttled, bN: byrequests over N)',
    sprintf('aoai 2 -> 64 members: %+.1f%% healthy, %+.1f%% half throttled (target within 5%%); '
            . 'stock byrequests 2 -> 64: %+.1f%%',
            $change->('m2', 'm64'), $change->('m2half', 'm64half'), $change->('b2', 'b64')));

# 3. Failover cost, and the window honoured
print STDERR "3. failover cost\n";
$mock->control('fo_primary', { force_status => 429, retry_after_ms => 0 });
my $f = compare(fo => "$gw_url/fo$path", solo => "$gw_url/solo$path");
my $fo_primary = $mock->stats('fo_primary')->{requests};
$mock->control('win_primary', { force_status => 429, retry_after_ms => 600_000 });
my $w = wrk("$gw_url/win$path", $duration);
my $win_primary = $mock->stats('win_primary')->{requests};
my $win_total = $mock->stats('win_secondary')->{requests};
row('3. Failover cost',
    sprintf('primary answers 429 with retry-after-ms 0, so every call fails over (%d did): p50 %.2f ms vs %.2f ms straight to the secondary; '
            . 'with a 600 s window: %d calls, %d reached the throttled primary',
            $fo_primary, $f->{fo}{p50}, $f->{solo}{p50}, $win_total, $win_primary),
    sprintf('added p50 **%.2f ms** per failover (target < 1 ms); %d calls to the primary inside the window beyond the first 429 (target 0; at most the %d in flight when it came)',
            $f->{fo}{p50} - $f->{solo}{p50}, $win_primary - 1, $connections));

# 4. Throttle scenario, through the module and through nginx
sub scenario {
    my ($bases, $primary, $secondary) = @_;
    $bases = [$bases] unless ref $bases;    # clients take the gateways in turn
    my $calls = $smoke ? 60 : 300;
    my $interval = $smoke ? 0.1 : 0.4;
    my @pids;
    my $results = "$nginx_dir/scenario-$primary";
    my $t0 = time;
    for my $worker (1 .. 4) {
        my $pid = fork // die;
        if (!$pid) {
            # independent clients: their starts spread over one interval
            # (in lockstep, every call in flight when the quota runs out
            # draws its own 429)
            sleep $interval * ($worker - 1) / 4;
            open my $out, '>', "$results.$worker" or die;
            for my $i (1 .. $calls / 4) {
                my $base = $bases->[ ($worker - 1) % @$bases ];
                my $res = HTTP::Tiny->new(timeout => 30, keep_alive => 0)->request(
                    'POST', "$base$path", { headers => { 'content-type' => 'application/json' },
                                            content => chat_body() });
                printf $out "%.6f %d\n", time, $res->{status};
                sleep $interval;
            }
            close $out;
            POSIX::_exit(0);    # not exit: the servers belong to the parent
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my $elapsed = time - $t0;
    my ($ok, @times) = (0);
    for my $worker (1 .. 4) {
        open my $in, '<', "$results.$worker" or die;
        while (<$in>) {
            my ($when, $status) = split;
            push @times, $when;
            $ok++ if $status == 200;
        }
    }
    # What the quota allowed: the mock opens a 10 s window at the first
    # call after the previous one ended and serves 20 calls in it, so a
    # window allows min(20, calls that arrived in it).
    my ($allowed, $windows, $window_start, $in_window) = (0, 0, undef, 0);
    for my $when (sort { $a <=> $b } @times) {
        if (!defined $window_start || $when >= $window_start + 10) {
            $allowed += $in_window < 20 ? $in_window : 20 if defined $window_start;
            ($window_start, $in_window) = ($when, 0);
            $windows++;
        }
        $in_window++;
    }
    $allowed += $in_window < 20 ? $in_window : 20;
    my $ps = $mock->stats($primary);
    return { success => $ok / @times, calls => scalar @times, elapsed => $elapsed,
             wasted_429 => $ps->{status}{429} || 0, primary_served => $ps->{status}{200} || 0,
             allowed => $allowed, windows => $windows };
}
print STDERR "4. throttle scenario\n";
my $sc = scenario("$gw_url/scen", 'scen_primary', 'scen_secondary');
my $sh = scenario("$gw_url/nohr", 'nohr_primary', 'nohr_secondary');
my $sn = scenario("http://127.0.0.1:$nginx_port/scen", 'ngx_primary', 'ngx_secondary');
for my $case ([ 'aoai', $sc, 0, 'zero: headroom routing steers away before the quota runs out', 95 ],
              [ 'aoai, headroom off', $sh, $sh->{windows}, 'one per window', 99 ],
              [ 'nginx', $sn, $sn->{windows}, 'one per window', 99 ]) {
    my ($name, $r, $target_429, $why, $target_share) = @$case;
    row("4. Throttle scenario ($name)",
        sprintf('%d calls from 4 clients in %.0f s; primary quota 20 per 10 s (%d windows)',
                $r->{calls}, $r->{elapsed}, $r->{windows}),
        sprintf('client success **%.3f** (target 1.000); 429s the primary sent **%d** (target %d, %s); '
                . 'primary served %d of the %d its quota allowed: **%.0f%%** (target >= %d%%)',
                $r->{success}, $r->{wasted_429}, $target_429, $why, $r->{primary_served},
                $r->{allowed}, 100 * $r->{primary_served} / $r->{allowed}, $target_share));
}

# 5. Memory
print STDERR "5. memory\n";
sub children_rss_kb {
    my @kids = split ' ', `pgrep -P $gw->{pid}`;
    my $total = 0;
    for my $kid (@kids) {
        open my $fh, '<', "/proc/$kid/status" or next;
        while (<$fh>) { $total += $1 if /^VmRSS:\s+(\d+)/ }
    }
    return ($total, scalar @kids);
}
my ($table_line) = $gw->error_log =~ /AOAI004: (throttle table: .*)$/m;
my ($slot_bytes) = ($table_line // '') =~ /slots of (\d+) bytes/;
wrk("$gw_url/aoai$path", 2);
my ($rss_before, $kids_before) = children_rss_kb();
my $seconds = 0;
my $sent = 0;
while ($sent < $memory_requests && $seconds < 120) {
    my $r = wrk("$gw_url/aoai$path", 5);
    $sent += $r->{rps} * 5;
    $seconds += 5;
}
my ($rss_after, $kids_after) = children_rss_kb();
row('5. Memory',
    sprintf('%s; children RSS %d kB before and %d kB after %.0f more requests (%d/%d children)',
            $table_line // 'throttle table line not found', $rss_before, $rss_after, $sent,
            $kids_before, $kids_after),
    sprintf('%s bytes of shared memory per member; RSS growth **%+.1f%%** (target: flat)',
            $slot_bytes // '?', ($rss_after - $rss_before) / $rss_before * 100));

# 6. nginx, overhead (its throttle scenario is in 4)
row('6. nginx (1.22, keepalive upstream)',
    sprintf('round robin over the same two members: %s', fmt($o->{nginx})),
    sprintf('nginx/byrequests throughput %.3f; see 4 for what it cannot do with Retry-After',
            $o->{nginx}{rps} / $o->{byreq}{rps}));

# 7. First-byte timeout: what failing over a member that says nothing
# costs beyond the timeout itself.
print STDERR "7. first-byte timeout\n";
$mock->control('fb_slow', { latency_ms => 10_000 });
my @fb_took;
for (1 .. ($smoke ? 3 : 10)) {
    my $t0 = time;
    my $res = chat($gw, path => "/fb$path", stream => 1);
    push @fb_took, time - $t0 if ($res->{headers}{'x-aoai-backend'} // '') eq 'fb_fast';
}
@fb_took = sort { $a <=> $b } @fb_took;
my $fb_median = @fb_took ? $fb_took[ int($#fb_took / 2) ] : 0;
row('7. First-byte timeout',
    sprintf('a member that holds its answer 10 s, AOAIFirstByteTimeout 500ms, %d streamed calls: %d served by the next member, median %.0f ms end to end',
            $smoke ? 3 : 10, scalar @fb_took, $fb_median * 1000),
    sprintf('**%.0f ms** from the timeout to the next member\'s whole stream', ($fb_median - 0.5) * 1000));

# 8. Several gateways: the throttle scenario through two gateways that
# share their windows through one Redis, against two that do not (headroom
# routing off in both, so that 429s are what the gateways learn from), and
# the overhead of a gateway with sync on against one with it off.
print STDERR "8. two gateways, shared cache\n";
my $redis = start_redis();
sub gateway_pair {
    my ($tag, $cache, $primary, $secondary) = @_;
    my $conf = ($cache ? "AOAISharedCache " . $redis->spec . "\nAOAISharedCacheSync $cache\n" : '')
        . balancer('aoai', 'aoai', [pA => 0], [pB => 0])
        . balancer('scen', 'aoai', [$primary => 0], [$secondary => 1])
        # headroom routing would steer both gateways away before any 429:
        # off, so that the 429s show what sharing the windows saves
        . "<Location /scen>\n    AOAIHeadroomFloor requests off\n"
        . "    AOAIHeadroomFloor tokens off\n</Location>\n";
    return map {
        start_gateway(name => "bench-$tag$_", conf => $conf, loglevel => 'warn',
                      mpm => 'event',
                      extra_modules => AOAITest::load_modules('socache_redis'))
    } 1, 2;
}
my @shared_pair = gateway_pair('shared', '250ms', 'shared_primary', 'shared_secondary');
my @fast_pair = gateway_pair('fast', '100ms', 'fast_primary', 'fast_secondary');
my @own_pair = gateway_pair('own', 0, 'own_primary', 'own_secondary');
my $ss = scenario([ map { $_->url . '/scen' } @shared_pair ], 'shared_primary', 'shared_secondary');
my $sf = scenario([ map { $_->url . '/scen' } @fast_pair ], 'fast_primary', 'fast_secondary');
my $so = scenario([ map { $_->url . '/scen' } @own_pair ], 'own_primary', 'own_secondary');
for my $case ([ 'one Redis', $ss ], [ 'one Redis, sync 100ms', $sf ], [ 'no cache', $so ]) {
    my ($name, $r) = @$case;
    row("8. Two gateways ($name)",
        sprintf('%d calls from 4 clients, 2 per gateway, in %.0f s; primary quota 20 per 10 s (%d windows); headroom routing off',
                $r->{calls}, $r->{elapsed}, $r->{windows}),
        sprintf('client success **%.3f** (target 1.000); 429s the primary sent **%d**, %.1f per window (target 1 per window in all with the cache); '
                . 'primary served %d of the %d its quota allowed',
                $r->{success}, $r->{wasted_429}, $r->{wasted_429} / $r->{windows},
                $r->{primary_served}, $r->{allowed}));
}
my $sync = compare(sync_on => $shared_pair[0]->url . "/aoai$path",
                   sync_off => $own_pair[0]->url . "/aoai$path");
row('8. Shared cache overhead',
    sprintf('sync on (Redis, every 250 ms): %s; sync off: %s', fmt($sync->{sync_on}), fmt($sync->{sync_off})),
    sprintf('on/off throughput **%.3f** (target: no measurable difference; the request path is unchanged)',
            $sync->{sync_on}{rps} / $sync->{sync_off}{rps}));
$_->stop for @shared_pair, @fast_pair, @own_pair;
$redis->stop;

my $errors = join ', ', map { "$_: $o->{$_}{errors}" } sort keys %$o;
chomp(my $cpu = `grep -m1 'model name' /proc/cpuinfo | cut -d: -f2`);
my $httpd = (`apache2 -v` =~ /Server version: (\S+)/)[0];
printf "Measured %s on %s, %d cores; %s; wrk -t2 -c%d, %d s per run, %d round(s) alternating; non-2xx in the overhead runs: %s.\n\n",
    scalar gmtime, $cpu =~ s/^\s+//r, `nproc` + 0, $httpd, $connections, $duration, $rounds, $errors;
print "| figure | measured | result |\n| --- | --- | --- |\n";
print "| ", join(' | ', @$_), " |\n" for @rows;

$gw->stop;
$mock->stop;
