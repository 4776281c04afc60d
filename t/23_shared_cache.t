# AOAISharedCache: two gateways, one view of every member's quota, through
# a real redis-server and a real memcached.
#   - a 429 seen through gateway A keeps gateway B's next calls off that
#     member within one sync interval; the cache holds the window's end;
#   - the cache stopped: both gateways keep serving, the request that met a
#     429 waits no longer than before, one AH10935 per gateway; the cache
#     back: sync resumes by itself (AH10936) and windows flow again;
#   - garbage under a member's key: rejected, logged, never a crash; a
#     far-future value parks the member no longer than AOAIThrottleMax;
#   - a hung cache: the request that met a 429 waits AOAISharedCacheTimeout
#     at most;
#   - the status pages say whether the cache is configured and reachable;
#   - bad directives fail apache2 -t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use AOAICache;
use Time::HiRes qw(time sleep);
use HTTP::Tiny;

my $mock = start_mock(members => [ map { { name => $_ } } qw(primary secondary tertiary) ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary tertiary);

sub gateway_conf {
    my ($spec, $extra) = @_;
    return ($spec ? "AOAISharedCache $spec\nAOAISharedCacheSync 250ms\n" : '')
        . ($extra // '') . <<"EOF";
<Proxy balancer://aoai>
    BalancerMember $url{primary} lbset=0 route=primary
    BalancerMember $url{secondary} lbset=1 route=secondary
    BalancerMember $url{tertiary} lbset=2 route=tertiary
    ProxySet lbmethod=aoai
    AOAIThrottleMax 20
</Proxy>
ProxyPass /openai balancer://aoai/openai
ProxyPass /aoai-status !
ProxyPass /server-status !
ExtendedStatus On
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
<Location /server-status>
    SetHandler server-status
</Location>
EOF
}

sub start_pair {
    my ($cache, $module) = @_;
    return map {
        start_gateway(name => "gw$_", conf => gateway_conf($cache->spec),
                      extra_modules => AOAITest::load_modules($module))
    } qw(A B);
}

sub status { AOAITest::get_json($_[0]->url . '/aoai-status') }
sub member_of {
    my ($status, $route) = @_;
    my ($m) = grep { $_->{route} eq $route } @{ $status->{balancers}[0]{members} };
    return $m;
}
sub count_lines { my ($gw, $re) = @_; scalar(() = $gw->error_log =~ /$re/g) }

# The same story through each provider.
sub shared_windows {
    my ($kind, $cache, $module) = @_;
    $mock->reset;
    my ($a, $b) = start_pair($cache, $module);

    # a. A 429 through A.
    $mock->control('primary', { force_status => 429, force_count => 1,
                                retry_after_ms => 15000 });
    my $t0 = time;
    my $res = chat($a);
    is($res->{status}, 200, "$kind: a call through A gets 200");
    is($res->{headers}{'x-aoai-backend'}, 'secondary', "$kind:   from the secondary, after the primary's 429");
    my $stored = $cache->get(cache_key('balancer://aoai', $url{primary}));
    ok(defined $stored && $stored =~ /^\d+$/, "$kind: the cache holds the primary's window end")
        or diag "stored: " . ($stored // 'nothing');
    my $expected_ms = ($t0 + 15) * 1000;
    cmp_ok(abs(($stored // 0) - $expected_ms), '<', 2000,
           "$kind:   as epoch milliseconds, 15 s ahead");

    # b. B learns it within one sync interval.
    my $learned_after;
    eval {
        AOAITest::wait_until('B to learn the window', 3, sub {
            (member_of(status($b), 'primary')->{state} // '') eq 'throttled'
        });
        $learned_after = time - $t0;
    };
    ok(defined $learned_after, "$kind: B shows the primary throttled");
    diag sprintf('%s: B learned the window %.0f ms after A\'s call', $kind,
                 1000 * ($learned_after // 0));
    cmp_ok($learned_after // 99, '<', 1.0, "$kind:   within one sync (250 ms, mod_watchdog's 300 ms steps) and the read");
    cmp_ok(status($b)->{shared_cache}{learned}, '>=', 1, "$kind:   and counts it as learned");
    $res = chat($b);
    is($res->{headers}{'x-aoai-backend'}, 'secondary', "$kind: B's call goes to the secondary");
    is($mock->stats('primary')->{requests}, 1, "$kind:   B never called the primary");
    cmp_ok(member_of(status($b), 'primary')->{throttled_for_ms}, '>', 12000,
           "$kind:   B parks it for the window A saw");

    # c. A's view of the cache.
    my $sc = status($a)->{shared_cache};
    ok($sc->{configured}, "$kind: A's status: configured");
    is($sc->{provider}, $kind eq 'redis' ? 'redis' : 'memcache', "$kind:   the provider");
    ok($sc->{reachable}, "$kind:   reachable");
    cmp_ok($sc->{published}, '>=', 1, "$kind:   the window published");
    cmp_ok($sc->{last_sync_age_ms} // 99999, '<', 2000, "$kind:   synced lately");
    my $auto = HTTP::Tiny->new(timeout => 10)->get($a->url . '/server-status?auto')->{content};
    like($auto, qr/^AOAISharedCache: provider=\w+ reachable=1 last_sync_age_ms=\d+ syncs=\d+ sync_failures=\d+ published=[1-9]\d* publish_failures=0 learned=\d+ rejected=0$/m,
         "$kind: server-status?auto has the cache line");

    # d. The cache goes away.  The primary is parked; a 429 on the
    # secondary now must still fail over to the tertiary, at once.
    $cache->stop;
    $mock->control('secondary', { force_status => 429, force_count => 1,
                                  retry_after_ms => 15000 });
    $t0 = time;
    $res = chat($a);
    my $took = time - $t0;
    is($res->{headers}{'x-aoai-backend'}, 'tertiary', "$kind: cache down: a 429 still fails over");
    cmp_ok($took, '<', 0.5, sprintf("%s:   in %.0f ms: the publish does not hold the call", $kind, 1000 * $took));
    my $ok = 0;
    for my $gw ($a, $b) {
        for (1 .. 10) { $ok++ if chat($gw)->{status} == 200 }
    }
    is($ok, 20, "$kind: 20 calls through the two gateways, all served");
    for my $gw ([ A => $a ], [ B => $b ]) {
        eval { AOAITest::wait_until('unreachable', 3, sub { !status($gw->[1])->{shared_cache}{reachable} }) };
        ok(!status($gw->[1])->{shared_cache}{reachable}, "$kind: $gw->[0] says unreachable");
    }
    sleep 1;    # several syncs fail meanwhile
    is(count_lines($a, qr/AH10935/), 1, "$kind: A logged AH10935 once, not once per sync");
    is(count_lines($b, qr/AH10935/), 1, "$kind: B logged AH10935 once");

    # e. Back.  apr_redis and apr_memcache try a dead server again after 5 s.
    $cache->start;
    my $back;
    eval {
        AOAITest::wait_until('sync to resume', 10, sub { status($a)->{shared_cache}{reachable}
                                                         && status($b)->{shared_cache}{reachable} });
        $back = 1;
    };
    ok($back, "$kind: after the cache returns, both gateways reach it again");
    like($a->error_log, qr/AH10936: AOAISharedCache \w+ is reachable again/, "$kind:   AH10936 says so");
    my $learned = 0;
    eval {
        AOAITest::wait_until('B to learn the window A could not store', 3, sub {
            (member_of(status($b), 'secondary')->{state} // '') eq 'throttled'
        });
        $learned = 1;
    };
    ok($learned, "$kind: the window A opened while the cache was down reaches B once it is back");
    $mock->control('tertiary', { force_status => 429, force_count => 1, retry_after_ms => 15000 });
    $res = chat($a);
    is($res->{status}, 429, "$kind: A's last member answers 429 too: the client gets 429");
    $learned = 0;
    eval {
        AOAITest::wait_until('B to learn again', 3, sub {
            (member_of(status($b), 'tertiary')->{state} // '') eq 'throttled'
        });
        $learned = 1;
    };
    ok($learned, "$kind: a new window through A reaches B again");

    unlike($_->error_log, qr/exit signal|AH00052/, "$kind: no child crashed") for $a, $b;
    $a->stop;
    $b->stop;
}

{
    my $redis = start_redis();
    shared_windows('redis', $redis, 'socache_redis');

    # f. Garbage under the tertiary's key, read by a fresh gateway.
    $mock->reset;
    my $key = cache_key('balancer://aoai', $url{tertiary});
    my $gw = start_gateway(name => 'gwG', conf => gateway_conf($redis->spec),
                           extra_modules => AOAITest::load_modules('socache_redis'));
    for my $garbage ('garbage', '-5', '123abc', '1' x 40) {
        $redis->set($key, $garbage);
        sleep 0.7;
        is(chat($gw)->{status}, 200, "garbage '$garbage' in the cache: calls are served");
    }
    cmp_ok(status($gw)->{shared_cache}{rejected}, '>=', 3, 'the values were rejected');
    is(count_lines($gw, qr/AH10937/), 1, 'AH10937 logged once (at most once a minute)');
    ok(!member_of(status($gw), 'tertiary')->{throttled_until}, 'the member is not parked by garbage');
    $redis->set($key, int((time - 10) * 1000));
    sleep 0.7;
    ok(!member_of(status($gw), 'tertiary')->{throttled_until}, 'a window in the past is ignored');
    $redis->set($key, int((time + 86400) * 1000));
    eval { AOAITest::wait_until('the far window', 3, sub { member_of(status($gw), 'tertiary')->{throttled_until} }) };
    my $left = member_of(status($gw), 'tertiary')->{throttled_for_ms} // 0;
    cmp_ok($left, '>', 15000, 'a window a day ahead parks the member');
    cmp_ok($left, '<=', 20000, "  for AOAIThrottleMax (20 s) at most ($left ms)");
    unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed on garbage');
    $gw->stop;
    $redis->stop;
}

{
    my $memcached = start_memcached();
    shared_windows('memcached', $memcached, 'socache_memcache');
    $memcached->stop;
}

# g. A hung cache: the wait is bounded by AOAISharedCacheTimeout.
{
    my $hole = start_blackhole();
    for my $case ([ '', 0, 0.5 ], [ "AOAISharedCacheTimeout 600ms\n", 0.6, 2 ]) {
        my ($extra, $at_least, $below) = @$case;
        $mock->reset;
        my $gw = start_gateway(name => 'gwH', conf => gateway_conf($hole->spec_redis, $extra),
                               extra_modules => AOAITest::load_modules('socache_redis'));
        $mock->control('primary', { force_status => 429, force_count => 1, retry_after_ms => 5000 });
        my $t0 = time;
        my $res = chat($gw);
        my $took = time - $t0;
        is($res->{status}, 200, "hung cache, timeout " . ($extra ? '600ms' : 'default 50ms') . ': served');
        cmp_ok($took, '>=', $at_least, sprintf('  the call waited for the store (%.0f ms)', 1000 * $took)) if $at_least;
        cmp_ok($took, '<', $below, sprintf('  no longer than the timeout allows (%.0f ms)', 1000 * $took));
        $t0 = time;
        is(chat($gw)->{status}, 200, '  the next call, with no 429, is served');
        cmp_ok(time - $t0, '<', 0.5, '  without waiting on the cache');
        $gw->stop;
    }
    $hole->stop;
}

# h. Not configured.
{
    my $gw = start_gateway(name => 'gwN', conf => gateway_conf(undef));
    is(status($gw)->{shared_cache}{configured}, JSON::PP::false(), 'without AOAISharedCache: configured false');
    like(HTTP::Tiny->new(timeout => 10)->get($gw->url . '/server-status?auto')->{content}, qr/^AOAISharedCache: off$/m,
         '  and server-status?auto says off');
    $gw->stop;
}

# i. Bad directives.
for my $case (
    [ "AOAISharedCache nosuch:127.0.0.1:1\n", qr/AOAISharedCache: no socache provider named 'nosuch'/ ],
    [ "AOAISharedCache shmcb\n", qr/AOAISharedCache: the 'shmcb' provider keeps its data on this host/ ],
    [ "AOAISharedCache redis\n", qr/AOAISharedCache redis: .*server/i ],
    [ "<VirtualHost 127.0.0.1:8080>\nAOAISharedCache redis:127.0.0.1:6379\n</VirtualHost>\n",
      qr/AOAISharedCache cannot occur within <VirtualHost> section/ ],
    [ "AOAISharedCacheSync 10ms\n", qr/AOAISharedCacheSync: 10ms is outside 100ms-60s/ ],
    [ "AOAISharedCacheTimeout abc\n", qr/AOAISharedCacheTimeout: 'abc' is not a positive duration/ ],
    [ "AOAISharedCacheTimeout 20s\n", qr/AOAISharedCacheTimeout: 20s is outside 1ms-10s/ ],
) {
    my ($ok, $out) = configtest($case->[0], qw(authz_core proxy proxy_http proxy_balancer
                                               slotmem_shm socache_shmcb socache_redis));
    ok(!$ok, "apache2 -t fails on: " . ($case->[0] =~ s/\n/ /gr));
    like($out, $case->[1], '  naming the directive and why') or diag $out;
}

$mock->stop;
done_testing();
