# Issue 16, the points that need load, HTTP/2, a cache restart or TLS:
#   6  HTTP/2 bursts of 16 streams while the first member answers 429 to
#      the first calls of each burst: every client gets 200, no error-level
#      line (mod_proxy's AH00940/AH01114 came from the module marking the
#      member in error under calls in flight), and the member's requests
#      counter equals what it received;
#   8  two gateways on one redis-server, restarted under load: the first
#      window after it is back is shared (no child's stale connection
#      loses it), and no false "unreachable" is logged while it is up;
#   9  an HTTPS member that accepts TCP and never finishes the handshake:
#      the call fails over within about AOAIFirstByteTimeout, streamed or
#      not, not after the member's timeout.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use JSON::PP;
use Time::HiRes qw(time sleep);
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } } qw(farm1 farm0) ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0);
my $work = tempdir('aoai-load-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub gateway_conf {
    my (%o) = @_;
    return ($o{head} // '')
         . balancer_conf('aoai', members => [
               [ $url{farm1}, lbset => 0, route => 'farm1' ],
               [ $url{farm0}, lbset => 1, route => 'farm0' ] ])
         . <<"EOF";
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
ProxyPass /aoai-status !
ProxyPass /openai balancer://aoai/openai
EOF
}
sub error_lines {
    my ($gw, $re) = @_;
    return grep { /$re/ } split /\n/, $gw->error_log;
}

# --- 6. HTTP/2 bursts against a member that answers 429 -----------------
subtest 'HTTP/2 bursts over 429s' => sub {
    my $gw = start_gateway(extra_modules => "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\n",
                           conf => gateway_conf(head => "Protocols h2c http/1.1\n"));
    open my $fh, '>', "$work/body.json" or die;
    print $fh chat_body();
    close $fh;
    my (%statuses, %backends);
    for my $round (1 .. 30) {
        $mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 100 });
        my $out = `node $TOP/t/lib/h2burst.mjs @{[ $gw->url ]} '$CHAT_PATH' $work/body.json 16 1 0`;
        my $burst = eval { decode_json($out) } or do { fail("burst $round: $out"); last };
        $statuses{$_} += $burst->{statuses}{$_} for keys %{ $burst->{statuses} };
        $backends{$_} += $burst->{backends}{$_} for keys %{ $burst->{backends} };
        sleep 0.12;
    }
    is_deeply(\%statuses, { 200 => 480 }, '480 streams in 30 bursts: every one 200');
    ok(($backends{farm1} // 0) > 0 && ($backends{farm0} // 0) > 0,
       "served by both members (farm1 $backends{farm1}, farm0 $backends{farm0})");
    my @errors = error_lines($gw, qr/:error\]|AH00940|AH01114/);
    is(scalar @errors, 0, 'no error-level line, no AH00940/AH01114') or diag join "\n", @errors[0 .. ($#errors < 4 ? $#errors : 4)];
    for my $route (qw(farm1 farm0)) {
        is(member_status($gw, 'aoai', $route)->{requests}, $mock->stats($route)->{requests},
           "$route: requests counted = requests it received (" . $mock->stats($route)->{requests} . ')');
    }
    is(member_status($gw, 'aoai', 'farm1')->{throttled}, 30, 'farm1: 30 429s counted');
    $gw->stop;
};

# --- 8. The cache restarted under load -----------------------------------
# Each child of gateway A keeps its own connections to redis once it has
# stored a window.  Connections held open to A pin calls to its children:
# a window is published from every child before the restart and after it.
subtest 'redis restarted under load' => sub {
    plan skip_all => 'redis-server is needed (t/run installs it)' unless `which redis-server`;
    sleep 0.3;
    $mock->reset;
    my $redis = start_redis();
    my $head = "KeepAliveTimeout 60\nAOAISharedCache " . $redis->spec . "\nAOAISharedCacheSync 100ms\n";
    my $mods = "LoadModule socache_redis_module /usr/lib/apache2/modules/mod_socache_redis.so\n";
    my %gw = map { $_ => start_gateway(name => "gw$_", extra_modules => $mods,
                                       conf => gateway_conf(head => $head)) } qw(A B);
    my $shared = sub { get_json($_[0]->url . '/aoai-status')->{shared_cache} };
    wait_until('both gateways to sync', 10, sub { $shared->($gw{A})->{reachable} && $shared->($gw{B})->{reachable} });

    # One held connection per child of A.
    my (%by_pid, $lines);
    for (1 .. 12) {
        my $sock = raw_connect($gw{A});
        raw_request($sock);
        my @log = access_log_records($gw{A}, ++$lines);
        $by_pid{ $log[-1]{pid} } //= $sock;
    }
    my @children = sort keys %by_pid;
    ok(@children >= 2, scalar(@children) . " children of A pinned by held connections");
    my $window = sub {
        my ($sock, $ms) = @_;
        $mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => $ms });
        my $res = raw_request($sock);
        my $learned = eval { wait_until('B to learn the window', 3, sub {
            (member_status($gw{B}, 'aoai', 'farm1')->{state} // '') eq 'throttled' }) };
        sleep($ms / 1000 + 0.1);
        return ($res, $learned);
    };
    for my $pid (@children) {
        my ($res, $learned) = $window->($by_pid{$pid}, 400);
        is(served_by($res), 'farm0', "before the restart, child $pid: a 429 failed over");
        ok($learned, '  and B learned the window');
    }

    my ($calls, $served) = (0, 0);
    my $load = sub { for (1 .. $_[0]) { for my $g (values %gw) { $calls++; $served++ if chat($g)->{status} == 200 } } };
    $redis->stop;
    $load->(10);
    $redis->start;
    my $back = time;
    wait_until('both gateways to reach redis again', 15, sub {
        $load->(1);
        $shared->($gw{A})->{reachable} && $shared->($gw{B})->{reachable};
    });
    diag sprintf 'both gateways reached redis again %.0f ms after it restarted', 1000 * (time - $back);
    is($served, $calls, "every call served through the restart ($calls)");
    my $reach_logged = () = error_lines($gw{A}, qr/AOAI035|AOAI050|AOAI036/);
    my $failures = $shared->($gw{A})->{publish_failures};

    for my $pid (@children) {
        my ($res, $learned) = $window->($by_pid{$pid}, 600);
        is(served_by($res), 'farm0', "after the restart, child $pid: a 429 failed over");
        ok($learned, "  B learned that window (no stale connection lost it)");
    }
    is($shared->($gw{A})->{publish_failures}, $failures, "none of A's stores after the restart failed");
    my @late = (error_lines($gw{A}, qr/AOAI035|AOAI050|AOAI036/))[$reach_logged .. 99];
    @late = grep { defined } @late;
    is(scalar @late, 0, 'no "unreachable" logged by A while redis was up') or diag join "\n", @late;
    $_->stop for values %gw;
    $redis->stop;
};

# --- 9. A TLS member that never finishes its handshake -------------------
subtest 'TLS handshake that never ends' => sub {
    sleep 0.3;
    $mock->reset;
    my $hole = start_blackhole();
    my $gw = start_gateway(tls => 1, conf =>
        "SSLProxyEngine on\nSSLProxyVerify none\nSSLProxyCheckPeerName off\n"
      . balancer_conf('aoai', members => [
            [ 'https://127.0.0.1:' . $hole->port, lbset => 0, route => 'silent', timeout => 3, retry => 0 ],
            [ $url{farm0}, lbset => 1, route => 'farm0' ] ],
            inside => [ 'AOAIFirstByteTimeout 1s' ])
      . "ProxyPass /openai balancer://aoai/openai\n");
    for my $streamed (1, 0) {
        my $t0 = time;
        my $res = chat($gw, stream => $streamed);
        my $took = time - $t0;
        my $what = $streamed ? 'streamed' : 'not streamed';
        is($res->{status}, 200, "$what: served");
        is(served_by($res), 'farm0', '  by the next member');
        ok($took >= 0.9 && $took < 2.2, sprintf '  after about the first-byte timeout of 1 s, not timeout=3 (%.2f s)', $took);
    }
    my $t0 = time;
    $gw->stop;
    ok(time - $t0 < 5, sprintf 'the gateway stops at once (%.1f s)', time - $t0);
    $hole->stop;
};

done_testing();
