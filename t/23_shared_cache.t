# Issue 10: AOAISharedCache, throttle windows shared between gateways
# through a real redis-server and a real memcached.
#   a-c  a 429 seen through gateway A is in the cache (epoch ms, with a
#        TTL) when the client has its answer, gateway B learns it within a
#        sync and never calls that member, and both status pages say so;
#   d    the cache stopped: both gateways keep serving, a 429 still fails
#        over at once, the status says unreachable and each error_log has
#        one AOAI035, not one per sync;
#   e    the cache back on the same port: reachable again (AOAI036), the
#        window A opened during the outage reaches B, and a new window
#        flows from A to B again (B then answers 429 asking no member);
#        (a-e through redis and through memcached)
#   f    garbage under a member's key: rejected, counted, logged once
#        (AOAI037), never a crash or a parked member; a window a day ahead
#        parks the member no longer than AOAIThrottleMax; one in the past
#        is ignored;
#   g    a cache that accepts and never answers: the request that met a 429
#        waits AOAISharedCacheTimeout at most (default 50ms, then 600ms);
#   h    without AOAISharedCache the status pages say so;
#   i    wrong directives fail apache2 -t, naming the directive.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use HTTP::Tiny;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);
use AOAITest;

my $started = time;
my @ROUTES = qw(primary secondary tertiary);
my $mock = start_mock(members => [ map { { name => $_ } } @ROUTES ]);
my %url = map { $_ => $mock->member_url($_) } @ROUTES;

# The gateway configuration; identical on every gateway of a test but for
# the cache and the limits named.
sub gateway_conf {
    my (%o) = @_;
    my $cache = $o{cache} ? "AOAISharedCache $o{cache}\n"
                          . "AOAISharedCacheSync " . ($o{sync} || '250ms') . "\n"
                          : '';
    $cache .= "AOAISharedCacheTimeout $o{timeout}\n" if $o{timeout};
    return "${cache}ExtendedStatus On\n"
         . balancer_conf('aoai', members => [
               [ $url{primary}, lbset => 0, route => 'primary' ],
               [ $url{secondary}, lbset => 1, route => 'secondary' ],
               [ $url{tertiary}, lbset => 2, route => 'tertiary' ] ],
               inside => [ $o{throttle_max} ? "AOAIThrottleMax $o{throttle_max}" : () ])
         . <<"EOF";
ProxyPass /aoai-status !
ProxyPass /server-status !
ProxyPass /openai balancer://aoai/openai
<Location /aoai-status>
    SetHandler aoai-balancer-status
    Require ip 127.0.0.1
</Location>
<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
EOF
}

sub gateway {
    my ($name, $module, %o) = @_;
    return start_gateway(name => $name, conf => gateway_conf(%o),
                         $module ? (extra_modules => AOAITest::load_modules($module)) : ());
}

# The key a member's window is kept under, computed as the contract says.
sub cache_key {
    my ($member_url) = @_;
    return 'aoai-balancer:' . substr(sha256_hex("balancer://aoai\0$member_url"), 0, 32);
}

sub cache_get {
    my ($cache, $key) = @_;
    if ($cache->isa('AOAITest::Redis')) {
        my $value = $cache->cli('GET', $key);
        return $value eq '' ? undef : $value;
    }
    return $cache->get($key);
}

sub cache_ttl {
    my ($cache, $key) = @_;
    return $cache->isa('AOAITest::Redis') ? $cache->cli('TTL', $key) : $cache->ttl($key);
}

sub status { get_json($_[0]->url . '/aoai-status') }
sub shared { status($_[0])->{shared_cache} }
sub auto_line {
    my ($gw) = @_;
    my $page = HTTP::Tiny->new(timeout => 10, keep_alive => 0)
        ->get($gw->url . '/server-status?auto')->{content} // '';
    my ($line) = $page =~ /^(AOAISharedCache:.*)$/m;
    return $line // '';
}
sub log_count {
    my ($gw, $re) = @_;
    return scalar(() = $gw->error_log =~ /$re/g);
}
sub log_lines {
    my ($gw, $re) = @_;
    return join '', grep { /$re/ } split /^/, $gw->error_log;
}

# Milliseconds since the epoch of an ISO 8601 time as the status gives it.
sub iso_ms {
    my ($iso) = @_;
    return undef unless defined $iso
        && $iso =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?Z$/;
    return timegm($6, $5, $4, $3, $2 - 1, $1) * 1000 + ($7 ? substr("${7}00", 0, 3) : 0);
}

# wait_until that reports instead of dying: seconds it took, or undef.
sub wait_for {
    my ($what, $timeout, $cond) = @_;
    my $t0 = time;
    return eval { wait_until($what, $timeout, $cond); time - $t0 };
}

sub ms { sprintf '%.0f ms', 1000 * $_[0] }

sub timed_chat {
    my ($gw) = @_;
    my $t0 = time;
    my $res = chat($gw);
    $res->{took} = time - $t0;
    return $res;
}

sub no_crash {
    my ($label, @gateways) = @_;
    for my $gw (@gateways) {
        unlike($gw->error_log, qr/exit signal|AH00052/, "$label: no child of $gw->{name} crashed");
    }
}

# ---------------------------------------------------------------------
# a-e: the same story through each provider.
sub shared_windows {
    my ($cache, $provider, $module) = @_;
    my $t = "$provider:";
    $mock->reset;
    my $A = gateway('gwA', $module, cache => $cache->spec);
    my $B = gateway('gwB', $module, cache => $cache->spec);
    # Both running their sync before anything is measured.
    ok(defined wait_for("$provider: both gateways to sync", 5, sub {
        my ($a, $b) = (shared($A), shared($B));
        $a->{reachable} && $a->{syncs} >= 1 && $b->{reachable} && $b->{syncs} >= 1;
    }), "$t both gateways reach the cache after start-up");
    is(member_status($A, 'aoai', 'primary')->{name}, $url{primary},
       "$t the member's name is its URL as written (the key is computed from it)");

    # a. A 429 through A: failover, and the window in the cache.
    $mock->control('primary', { force_status => 429, force_count => 1,
                                retry_after_ms => 30000 });
    my $t0 = time;
    my $res = chat($A);
    my $t1 = time;
    is($res->{status}, 200, "$t a call through A whose primary answers 429 gets 200");
    is(served_by($res), 'secondary', "$t   from the secondary");
    note "$provider: the call with the 429 took " . ms($t1 - $t0);
    my $key = cache_key($url{primary});
    my $value = cache_get($cache, $key);
    note "$provider: the window was " . (defined $value ? '' : 'not ')
       . "in the cache when the client had its answer";
    my $waited = wait_for("$provider: the window in the cache", 2,
                          sub { defined($value = cache_get($cache, $key)) });
    ok(defined $waited, "$t the cache holds $key") or do {
        diag "keys in redis: " . $cache->cli('KEYS', 'aoai-balancer:*') if $cache->isa('AOAITest::Redis');
    };
    like($value // '', qr/^\d+\z/, "$t   as plain decimal digits ('" . ($value // 'nothing') . "')");
    my ($low, $high) = (int($t0 * 1000) + 30000 - 1000, int($t1 * 1000) + 30000 + 1000);
    ok(($value // 0) >= $low && ($value // 0) <= $high,
       "$t   the window's end in epoch ms, 30 s after the 429 ("
       . (($value // 0) - int($t1 * 1000)) . " ms after the answer)");
    my $ttl = cache_ttl($cache, $key) // -2;
    cmp_ok($ttl, '>=', 1, "$t   with an expiry ($ttl s left)");
    is($cache->cli('TYPE', $key), 'string', "$t   as a plain redis string")
        if $cache->isa('AOAITest::Redis');

    # b. B learns it from its sync and keeps its calls off the primary.
    my $learned_in = wait_for("$provider: B to learn the window", 3,
                              sub { (member_status($B, 'aoai', 'primary')->{state} // '') eq 'throttled' });
    ok(defined $learned_in, "$t B shows the primary throttled");
    $learned_in //= 99;
    my $since_answer = time - $t1;
    diag sprintf "%s: B showed A's window %s after A's client had its answer (sync 250ms)",
                 $provider, ms($since_answer);
    cmp_ok($since_answer, '<', 1.5, "$t   within 1.5 s");
    my $b_primary = member_status($B, 'aoai', 'primary');
    my $b_until = iso_ms($b_primary->{throttled_until}) // 0;
    ok(abs($b_until - ($value // 0)) <= 1,
       "$t   until the end A stored ($b_primary->{throttled_until}, "
       . ($b_until - ($value // 0)) . " ms off)");
    cmp_ok(shared($B)->{learned}, '>=', 1, "$t   B counts it as learned");
    $res = chat($B);
    is($res->{status}, 200, "$t a call through B is served");
    is(served_by($res), 'secondary', "$t   by the secondary");
    is($mock->stats('primary')->{requests}, 1, "$t   the primary was asked once in all: B never called it");

    # c. A's view of the cache, JSON and ?auto.
    my $sc = shared($A);
    ok(JSON::PP::is_bool($sc->{configured}) && $sc->{configured}, "$t A's status: configured true");
    is($sc->{provider}, $provider, "$t   provider $provider");
    ok(JSON::PP::is_bool($sc->{reachable}) && $sc->{reachable}, "$t   reachable true");
    cmp_ok($sc->{published}, '>=', 1, "$t   published $sc->{published}");
    is($sc->{publish_failures}, 0, "$t   no publish failure");
    is($sc->{learned}, 0, "$t   A's own window read back is not learned");
    is($sc->{sync_failures}, 0, "$t   no failed sync");
    cmp_ok($sc->{syncs}, '>=', 1, "$t   syncs $sc->{syncs}");
    like($sc->{last_sync} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, "$t   last_sync is an ISO time");
    ok(defined $sc->{last_sync_age_ms} && $sc->{last_sync_age_ms} =~ /^\d+$/
       && $sc->{last_sync_age_ms} < 2000,
       "$t   last_sync_age_ms " . ($sc->{last_sync_age_ms} // 'null') . " < 2000");
    like(auto_line($A), qr/^AOAISharedCache: provider=\Q$provider\E reachable=1 last_sync_age_ms=\d+ syncs=[1-9]\d* sync_failures=0 published=[1-9]\d* publish_failures=0 learned=0 rejected=0$/,
         "$t server-status?auto of A: the cache line") or diag auto_line($A);
    like(auto_line($B), qr/^AOAISharedCache: provider=\Q$provider\E reachable=1 .* learned=[1-9]\d* rejected=0$/,
         "$t server-status?auto of B: learned counted") or diag auto_line($B);

    # d. The cache goes away.
    $cache->stop;
    my $stopped = time;
    my %gone;
    for my $gw ($A, $B) {
        $gone{ $gw->{name} } = wait_for("$provider: $gw->{name} to see the cache gone", 5,
                                        sub { !shared($gw)->{reachable} });
    }
    my $gone_in = time - $stopped;
    ok(defined $gone{gwA} && defined $gone{gwB}, "$t cache stopped: both statuses say reachable false");
    diag "$provider: both gateways said unreachable " . ms($gone_in) . " after the cache stopped";
    cmp_ok($gone_in, '<', 2, "$t   within 2 s");
    my $secondary_before = $mock->stats('secondary')->{requests};
    my (%status, %backend, $slowest);
    $slowest = 0;
    for my $gw ($A, $B) {
        for (1 .. 20) {
            my $r = timed_chat($gw);
            $status{ $r->{status} }++;
            $backend{ served_by($r) }++;
            $slowest = $r->{took} if $r->{took} > $slowest;
        }
    }
    is($status{200} // 0, 40, "$t cache down: 20 calls through each gateway, all 200")
        or diag explain \%status;
    is($backend{secondary} // 0, 40, "$t   all from the secondary (the primary is still parked on both)")
        or diag explain \%backend;
    is($mock->stats('secondary')->{requests} - $secondary_before, 40, "$t   none lost or repeated");
    note "$provider: slowest of the 40 calls: " . ms($slowest);
    cmp_ok($slowest, '<', 1, "$t   none held up by the cache");
    # A 429 while the cache is down: the store fails, the call does not.
    $mock->control('secondary', { force_status => 429, force_count => 1,
                                  retry_after_ms => 20000 });
    $res = timed_chat($A);
    is($res->{status}, 200, "$t cache down: a call whose member answers 429 gets 200");
    is(served_by($res), 'tertiary', "$t   from the next member");
    diag "$provider: the call with a 429 while the cache was down took " . ms($res->{took});
    cmp_ok($res->{took}, '<', 1, "$t   in less than 1 s");
    my $failures = shared($A)->{sync_failures};
    # Several more syncs fail before the log is counted.
    ok(defined wait_for("$provider: more failed syncs", 3, sub {
        shared($A)->{sync_failures} >= $failures + 3 && shared($B)->{sync_failures} >= 4
    }), "$t   the syncs go on failing (" . shared($A)->{sync_failures} . " on A, "
        . shared($B)->{sync_failures} . " on B)");
    cmp_ok(shared($A)->{publish_failures}, '>=', 1, "$t   A counts the window it could not publish");
    for my $gw ($A, $B) {
        is(log_count($gw, qr/AOAI035/), 1, "$t $gw->{name} logged AOAI035 once, not once per sync")
            or diag log_lines($gw, qr/AOAI035/);
        like(log_lines($gw, qr/AOAI035/), qr/unreachable/, "$t   saying unreachable");
    }

    # e. The cache back, on the same port.
    $cache->start;
    my $restarted = time;
    my $back_in = wait_for("$provider: both gateways to reach the cache again", 10, sub {
        shared($A)->{reachable} && shared($B)->{reachable}
    });
    ok(defined $back_in, "$t cache restarted: both statuses say reachable true again");
    diag "$provider: both gateways reached the cache again " . ms(time - $restarted)
       . " after it restarted";
    cmp_ok(time - $restarted, '<', 7,
           "$t   within 7 s (the provider holds a failed server for dead 5 s)");
    for my $gw ($A, $B) {
        like(log_lines($gw, qr/AOAI036/), qr/reachable again/, "$t   $gw->{name} logged AOAI036");
    }
    # The window A opened while the cache was down, whose store failed, is
    # stored by A's sync once the cache is back, and B learns it.
    my $a_secondary = member_status($A, 'aoai', 'secondary');
    is($a_secondary->{state}, 'throttled', "$t A still parks the secondary (20 s window from the outage)");
    my $late = wait_for("$provider: B to learn the window A could not store", 3, sub {
        (member_status($B, 'aoai', 'secondary')->{state} // '') eq 'throttled'
    });
    ok(defined $late, "$t the window A opened while the cache was down reaches B once it is back");
    my $b_secondary = member_status($B, 'aoai', 'secondary');
    ok(abs((iso_ms($b_secondary->{throttled_until}) // 0) - (iso_ms($a_secondary->{throttled_until}) // 0)) <= 1,
       "$t   the same window ($a_secondary->{throttled_until} on A, "
       . ($b_secondary->{throttled_until} // 'none') . " on B)");

    # A new 429 through A reaches B again: the tertiary, the last member.
    my %asked = map { $_ => $mock->stats($_)->{requests} } @ROUTES;
    $mock->control('tertiary', { force_status => 429, force_count => 1,
                                 retry_after_ms => 30000 });
    $res = chat($A);
    $t1 = time;
    is($res->{status}, 429, "$t a new 429 through A from its last member: the client gets 429");
    is($mock->stats('tertiary')->{requests}, $asked{tertiary} + 1, "$t   after asking the tertiary");
    my $again = wait_for("$provider: B to learn the new window", 3, sub {
        (member_status($B, 'aoai', 'tertiary')->{state} // '') eq 'throttled'
    });
    ok(defined $again, "$t   and B learns it again");
    diag "$provider: after the restart B learned A's new window " . ms(time - $t1) . " after the answer";
    cmp_ok(time - $t1, '<', 1.5, "$t   within 1.5 s");
    cmp_ok(member_status($B, 'aoai', 'tertiary')->{throttled_for_ms}, '>', 25000, "$t   the 30 s window");
    $res = chat($B);
    is($res->{status}, 429, "$t B, every member parked by windows it learned, answers 429");
    my $retry_ms = $res->{headers}{'retry-after-ms'} // 0;
    my ($soonest) = sort { $a <=> $b } map { member_status($B, 'aoai', $_)->{throttled_for_ms} } @ROUTES;
    ok(abs($retry_ms - $soonest) <= 1000,
       "$t   retry-after-ms $retry_ms: the soonest learned window ends then ($soonest ms left)");
    is($mock->stats($_)->{requests}, $asked{$_} + ($_ eq 'tertiary' ? 1 : 0),
       "$t   B asked no member ($_)") for @ROUTES;

    no_crash($provider, $A, $B);
    $_->stop for $A, $B;
}

my $redis = start_redis();
shared_windows($redis, 'redis', 'socache_redis');

my $memcached = start_memcached();
shared_windows($memcached, 'memcache', 'socache_memcache');
$memcached->stop;

# ---------------------------------------------------------------------
# f. Garbage under a member's key (redis).
{
    $redis->cli('FLUSHALL');
    $mock->reset;
    my $F = gateway('gwF', 'socache_redis', cache => $redis->spec, throttle_max => 20);
    ok(defined wait_for('gwF to sync', 5, sub { shared($F)->{syncs} >= 1 }), 'garbage: the gateway syncs');
    my $key = cache_key($url{tertiary});
    # A sync that began before the SET may still count the value before;
    # rejections counted once two more syncs are over come from the new one.
    for my $garbage ('garbage', '-5', '123abc', '1' x 40) {
        my $syncs = shared($F)->{syncs};
        $redis->cli('SET', $key, $garbage, 'EX', 60);
        my ($rejected, $read);
        wait_for("'$garbage' to be read", 3, sub {
            my $sc = shared($F);
            ($rejected, $read) = @{$sc}{qw(rejected syncs)};
            $read >= $syncs + 2;
        });
        my $grew = wait_for("'$garbage' to be rejected", 3, sub {
            my $sc = shared($F);
            $sc->{syncs} >= $read + 2 && $sc->{rejected} > $rejected;
        });
        ok(defined $grew, "garbage '$garbage' under the tertiary's key: rejected ("
           . shared($F)->{rejected} . ' in all)');
        my $res = chat($F);
        is($res->{status}, 200, "  calls are served");
        is(member_status($F, 'aoai', 'tertiary')->{state}, 'ok', '  the tertiary is not parked');
    }
    is(log_count($F, qr/AOAI037/), 1, 'garbage: AOAI037 logged once for four bad values')
        or diag log_lines($F, qr/AOAI037/);
    ok(shared($F)->{reachable}, 'garbage: the cache is still reachable');

    # A window a day ahead: parked for AOAIThrottleMax (20 s) at most.
    my $learned = shared($F)->{learned};
    $redis->cli('SET', $key, int((time + 86400) * 1000), 'EX', 60);
    ok(defined wait_for('the far window to be read', 2, sub {
        (member_status($F, 'aoai', 'tertiary')->{state} // '') eq 'throttled'
    }), 'a window a day ahead parks the tertiary');
    my $now_ms = time * 1000;
    my $tertiary = member_status($F, 'aoai', 'tertiary');
    my $until = iso_ms($tertiary->{throttled_until}) // 0;
    diag "a day ahead became " . ($until - int $now_ms) . " ms (AOAIThrottleMax 20)";
    cmp_ok($until, '<=', $now_ms + 21000, '  no longer than AOAIThrottleMax: throttled_until <= now + 21 s');
    cmp_ok($until, '>=', $now_ms + 15000, '  and for about that long');
    cmp_ok($tertiary->{throttled_for_ms}, '<=', 20000, "  throttled_for_ms $tertiary->{throttled_for_ms}");
    is(shared($F)->{learned}, $learned + 1, '  counted as learned');

    # A window in the past: ignored, and not garbage.
    my ($rejected, $syncs) = @{ shared($F) }{qw(rejected syncs)};
    $learned = shared($F)->{learned};
    $redis->cli('SET', cache_key($url{secondary}), int((time - 10) * 1000), 'EX', 60);
    ok(defined wait_for('three syncs', 3, sub { shared($F)->{syncs} >= $syncs + 3 }),
       'a window in the past under the secondary\'s key, read three times over');
    is(member_status($F, 'aoai', 'secondary')->{state}, 'ok', '  ignored: the secondary is not parked');
    is(shared($F)->{learned}, $learned, '  nothing learned');
    is(shared($F)->{rejected}, $rejected, '  and not counted as rejected');
    is(chat($F)->{status}, 200, '  calls are served');
    no_crash('garbage', $F);
    $F->stop;
}
$redis->stop;

# ---------------------------------------------------------------------
# g. A cache that accepts connections and never answers.
{
    my $hole = start_blackhole();
    $mock->reset;
    my %gw = (C => gateway('gwC', 'socache_redis', cache => $hole->spec_redis),
              D => gateway('gwD', 'socache_redis', cache => $hole->spec_redis, timeout => '600ms'));
    for my $case ([ C => 'default 50ms', 0, 1 ], [ D => '600ms', 0.6, 2 ]) {
        my ($name, $label, $at_least, $below) = @$case;
        my $plain = timed_chat($gw{$name});
        is($plain->{status}, 200, "hung cache, timeout $label: a call is served");
        $mock->control('primary', { force_status => 429, force_count => 1,
                                    retry_after_ms => 5000 });
        my $res = timed_chat($gw{$name});
        is($res->{status}, 200, "  a call whose primary answers 429 gets 200");
        is(served_by($res), 'secondary', '  from the secondary');
        diag "hung cache, AOAISharedCacheTimeout $label: the call without a 429 took "
           . ms($plain->{took}) . ", the one with a 429 " . ms($res->{took});
        cmp_ok($res->{took}, '>=', $at_least, '  it waited for the store: ' . ms($res->{took}))
            if $at_least;
        cmp_ok($res->{took}, '<', $below, "  no longer than the timeout allows: under ${below}s");
        my $next = timed_chat($gw{$name});
        is($next->{status}, 200, '  the next call is served');
        cmp_ok($next->{took}, '<', 0.5, '  without waiting on the cache (' . ms($next->{took}) . ')');
    }
    # The hung connections are closed first, so that no child waits on them.
    $hole->stop;
    no_crash('hung cache', values %gw);
    $_->stop for values %gw;
}

# ---------------------------------------------------------------------
# h. Not configured.
{
    my $N = gateway('gwN', undef);
    my $sc = shared($N);
    ok(JSON::PP::is_bool($sc->{configured}) && !$sc->{configured},
       'without AOAISharedCache: shared_cache.configured is false');
    ok(!exists $sc->{provider}, '  with no provider');
    is(auto_line($N), 'AOAISharedCache: off', '  server-status?auto says AOAISharedCache: off');
    $N->stop;
}

# ---------------------------------------------------------------------
# i. Directives: apache2 -t.
{
    my @modules = qw(authz_core proxy proxy_http proxy_balancer slotmem_shm
                     lbmethod_byrequests socache_shmcb socache_redis socache_memcache);
    my $balancer = balancer_conf('aoai', members => [ [ 'http://127.0.0.1:9', lbset => 0 ] ]);
    for my $good ("AOAISharedCache redis:127.0.0.1:6379\nAOAISharedCacheSync 100ms\nAOAISharedCacheTimeout 1ms\n",
                  "AOAISharedCache memcache:127.0.0.1:11211\nAOAISharedCacheSync 60s\nAOAISharedCacheTimeout 10s\n",
                  "AOAISharedCache none\n") {
        my ($ok, $out) = configtest($good . $balancer, @modules);
        ok($ok, 'apache2 -t passes: ' . ($good =~ s/\n/; /gr)) or diag $out;
    }
    my @bad = (
        [ 'AOAISharedCache nosuch:127.0.0.1:1', qr/AOAISharedCache.*no socache provider/ ],
        [ 'AOAISharedCache shmcb', qr/AOAISharedCache.*this host/ ],
        [ 'AOAISharedCache redis', qr/AOAISharedCache/ ],
        [ "<VirtualHost 127.0.0.1:8080>\n    AOAISharedCache redis:127.0.0.1:6379\n</VirtualHost>",
          qr/AOAISharedCache\b.*VirtualHost/ ],
        [ 'AOAISharedCacheSync 10ms', qr/AOAISharedCacheSync/ ],
        [ 'AOAISharedCacheSync 61s', qr/AOAISharedCacheSync/ ],
        [ 'AOAISharedCacheTimeout abc', qr/AOAISharedCacheTimeout/ ],
        [ 'AOAISharedCacheTimeout 11s', qr/AOAISharedCacheTimeout/ ],
    );
    for my $case (@bad) {
        my ($directive, $expect) = @$case;
        my ($ok, $out) = configtest("$directive\n$balancer", @modules);
        (my $name = $directive) =~ s/\n\s*/; /g;
        ok(!$ok, "apache2 -t fails for: $name");
        like($out, $expect, '  naming the directive') or diag $out;
    }
    # shmcb is refused because it is host-local, not because it is unknown.
    my ($ok, $out) = configtest("AOAISharedCache shmcb\n$balancer",
                                grep { $_ ne 'socache_shmcb' } @modules);
    like($out, qr/AOAISharedCache.*no socache provider/, 'without mod_socache_shmcb, shmcb is an unknown provider')
        or diag $out;
}

$mock->stop;
diag sprintf 't/23 took %.1f s', time - $started;
done_testing();
