# Issue 22: the Realtime API, a WebSocket per session, supported on purpose.
#   1  `ProxyPass /openai balancer://aoai/openai`, as users write it, carries
#      sessions (the module gives the members upgrade=websocket); sessions
#      go by the module's choice: priority, throttle windows, the
#      deployment map (the query's deployment= rewritten to the member's
#      name);
#   2  a member that answers the handshake 429 (its window recorded), 5xx
#      or refuses the connection is failed over before anything reaches the
#      client; a session, once 101, is never moved;
#   3  keys from the api-key header or, as browsers send it, the api-key
#      query parameter; scrubbed from what the member gets and from the
#      logs; the member gets its own credential;
#   4  x-aoai-backend on the 101 and the log fields for every session; the
#      usage of response.done events counted as tokens (log, counters, key
#      quota); a graceful restart lets an open session finish;
#   5  a GET on the Realtime path that is no handshake, a handshake without
#      a key or with a wrong one: Azure-shaped errors, no member called.
# The members and the client are WebSocket peers from npm's ws (t/ws/).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(sleep time);
use AOAITest;

plan skip_all => 'node and t/ws/node_modules are needed (t/run installs them)'
    unless `which node` && -d "$TOP/t/ws/node_modules/ws";

my %member_key = (farm1 => 'rt-key-farm1-1111', farm0 => 'rt-key-farm0-0000');
my $client_key = 'sk-realtime-client-5678';
my %port = (farm1 => free_port(), farm0 => free_port(), gone => free_port());
my $members_pid = open(my $members, '-|', 'node', "$TOP/t/ws/member.mjs",
                       map { "$_:$port{$_}:$member_key{$_}" } qw(farm1 farm0)) or die "node: $!";
my $ready = <$members>;
die "the Realtime members did not start" unless ($ready // '') =~ /ready/;
END { kill 'TERM', $members_pid if $members_pid }

my $secrets = tempdir('aoai-realtime-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
write_key_file("$secrets/keys", browser => $client_key);
$ENV{AOAI_RT_FARM1} = $member_key{farm1};
$ENV{AOAI_RT_FARM0} = $member_key{farm0};

my $gw = start_gateway(conf => <<"EOF");
<Proxy balancer://aoai>
    BalancerMember http://127.0.0.1:$port{farm1} lbset=0 route=farm1
    BalancerMember http://127.0.0.1:$port{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
    AOAIMemberCredential farm1 api-key env:AOAI_RT_FARM1
    AOAIMemberCredential farm0 api-key env:AOAI_RT_FARM0
    AOAIDeployment farm1 gpt-4o-realtime
    AOAIDeployment farm0 gpt-4o-realtime rt-sweden
</Proxy>
<Proxy balancer://down>
    BalancerMember http://127.0.0.1:$port{gone} lbset=0 route=gone
    BalancerMember http://127.0.0.1:$port{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
    AOAIMemberCredential farm0 api-key env:AOAI_RT_FARM0
</Proxy>
<Location /openai>
    AOAISubscriptionKeyFile $secrets/keys
</Location>
<Location /tight>
    AOAISubscriptionKeyFile $secrets/keys
    AOAIKeyTokensPerMinute 25
</Location>
<Location /down>
    AOAISubscriptionKeyFile $secrets/keys
</Location>
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
ProxyPass /aoai-status !
ProxyPass /down/openai balancer://down/openai
ProxyPass /tight/openai balancer://aoai/openai
ProxyPass /openai balancer://aoai/openai
EOF

my $JSON = JSON::PP->new;
(my $ws = $gw->url) =~ s/^http/ws/;
my $query = 'api-version=2024-10-01-preview&deployment=gpt-4o-realtime';
sub session {
    my ($url, $key, $pause) = @_;
    my $out = `node $TOP/t/ws/client.mjs '$url' ${\ ($key // '-')} ${\ ($pause // 0)} 2>&1`;
    return eval { $JSON->decode((split /\n/, $out)[-1]) } || { error => $out };
}
sub stats { get_json("http://127.0.0.1:$port{$_[0]}/mock/stats") }
sub control { AOAITest::post_json("http://127.0.0.1:$port{$_[0]}/mock/control", $_[1]) }
sub handshakes { my %n = map { $_ => stats($_)->{handshakes} } qw(farm1 farm0); \%n }
my $logged = 0;
sub log_line {
    my $want = ++$logged;
    my @lines;
    wait_until("access log line $want", 10, sub {
        @lines = grep { m{"GET /(down/|tight/)?openai/} } $gw->access_log_lines; @lines >= $want });
    return $lines[$want - 1];
}

subtest 'sessions through ProxyPass as users write it' => sub {
    my $s = session("$ws/openai/realtime?$query", $client_key);
    is($s->{status}, 101, 'the handshake: 101');
    is($s->{backend}, 'farm1', '  x-aoai-backend on the 101: the priority member');
    is_deeply($s->{events}, [qw(session.created response.created response.text.delta response.text.delta
                                response.text.delta response.done)], '  the whole exchange');
    is(stats('farm1')->{last_key}, 'valid', "  the member got its own key");
    like(log_line(), qr/" 101 pid=\d+ backend=farm1 attempts=1 skipped=0 key=browser tokens=10\/20\/30$/,
         '  the access log: 101, the member, the key label, the tokens of response.done');
    my ($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9\nProxySet lbmethod=aoai\n</Proxy>\n"
                                . "ProxyPass /openai balancer://b/openai upgrade=websocket\n");
    ok(!$ok, 'upgrade= on a ProxyPass to a balancer: apachectl -t refuses it');
    like($out, qr/ProxyPass: upgrade=websocket is a parameter of a member, not of a balancer \(balancer:\/\/b\/openai\): the members of an lbmethod=aoai balancer take WebSocket sessions without it/,
         '  saying where it belongs and that it is not needed') or diag $out;
    ($ok, $out) = configtest("<Proxy balancer://b>\nBalancerMember http://127.0.0.1:9\nProxySet lbmethod=aoai\n</Proxy>\n"
                             . "<Location /rt>\nProxyPass balancer://b/openai/realtime timeout=30\n</Location>\n"
                             . "ProxyPassMatch ^/x(.*)\$ http://127.0.0.1:9/\$1 upgrade=websocket\n");
    ok($ok, '  any other ProxyPass goes on to mod_proxy as written') or diag $out;
};

subtest 'failover at the handshake, never after' => sub {
    control('farm1', { handshake_status => 429, count => 1, retry_after_ms => 3000 });
    my $before = handshakes();
    my $s = session("$ws/openai/realtime?$query", $client_key);
    is($s->{status}, 101, 'farm1 answers the handshake 429: the session opens anyway');
    is($s->{backend}, 'farm0', '  on farm0');
    like(stats('farm0')->{last_path}, qr/deployment=rt-sweden/, "  with farm0's name for the deployment in the query") or diag explain stats('farm0');
    like(log_line(), qr/backend=farm0 attempts=2/, '  two attempts');
    my $member = member_status($gw, 'aoai', 'farm1');
    is($member->{state}, 'throttled', "farm1's window is recorded");
    $s = session("$ws/openai/realtime?$query", $client_key);
    is($s->{backend}, 'farm0', 'the next session goes to farm0 at once');
    is(handshakes()->{farm1} - $before->{farm1}, 1, '  farm1 was not asked again');
    log_line();
    sleep 3.1;

    control('farm1', { handshake_status => 503, count => 1 });
    $s = session("$ws/openai/realtime?$query", $client_key);
    is($s->{backend}, 'farm0', 'a 503 at the handshake: failed over') or diag explain $s;
    log_line();
    $s = session("$ws/down/openai/realtime?api-version=2024-10-01-preview&deployment=x", $client_key);
    is($s->{status}, 101, 'a member that refuses the connection: failed over');
    is($s->{backend}, 'farm0', '  to farm0');
    log_line();

    $before = handshakes();
    $s = session("$ws/openai/realtime?$query", $client_key);
    is($s->{backend}, 'farm1', 'farm1 back') or diag explain $s;
    is_deeply([ map { handshakes()->{$_} - $before->{$_} } qw(farm1 farm0) ], [ 1, 0 ],
              '  one handshake, on farm1 only: the session never moved');
    log_line();
};

subtest 'keys in the query, as browsers send them' => sub {
    my $s = session("$ws/openai/realtime?$query&api-key=$client_key");
    is($s->{status}, 101, 'the api-key query parameter: 101') or diag explain $s;
    unlike(stats('farm1')->{last_path}, qr/api-key/, '  the member never sees it');
    is(stats('farm1')->{last_key}, 'valid', '  it gets its own key');
    log_line();
    my $before = handshakes();
    $s = session("$ws/openai/realtime?$query&api-key=sk-wrong-realtime-9999");
    is($s->{status}, 401, 'a wrong key in the query: 401');
    like($s->{body}, qr/"statusCode": 401/, "  in API Management's shape");
    $s = session("$ws/openai/realtime?$query");
    is($s->{status}, 401, 'no key: 401');
    is_deeply(handshakes(), $before, '  no member called for either');
    log_line() for 1 .. 2;
    my $plain = HTTP::Tiny->new->get($gw->url . "/openai/realtime?$query", { headers => { 'api-key' => $client_key } });
    is($plain->{status}, 400, 'a plain GET on the Realtime path: 400');
    like($plain->{content}, qr/"code":"BadRequest"/, "  in Azure's shape");
    is_deeply(handshakes(), $before, '  no member called');
    log_line();
};

subtest 'tokens counted, a graceful restart lets a session finish' => sub {
    my $member = member_status($gw, 'aoai', 'farm1');
    ok($member->{tokens}{total} >= 30, "response.done's usage counted on the member ($member->{tokens}{total})");
    my $before = handshakes();
    my $s = session("$ws/tight/openai/realtime?$query", $client_key);
    is($s->{status}, 101, "a key's token quota: a session within it opens");
    log_line();
    $s = session("$ws/tight/openai/realtime?$query", $client_key);
    is($s->{status}, 429, "  its 30 tokens charged: the next session is refused") or diag explain $s;
    is(handshakes()->{farm1} - $before->{farm1}, 1, '  without a member called');
    log_line();
    my $pid = open(my $long, '-|', 'node', "$TOP/t/ws/client.mjs", "$ws/openai/realtime?$query", $client_key, 2500)
        or die;
    sleep 1;
    $gw->graceful;
    $s = eval { $JSON->decode((split /\n/, join '', <$long>)[-1]) } || {};
    close $long;
    is_deeply([ @{ $s->{events} || [] }[ -1 ] ], ['response.done'], 'a session open across a graceful restart finished its exchange') or diag explain $s;
    log_line();
};

$gw->stop;
my $logs = $gw->error_log . $gw->log_text('access_log') . $gw->log_text('combined_log');
for my $secret ($client_key, values %member_key) {
    unlike($logs, qr/\Q$secret\E/, 'no log holds ' . substr($secret, 0, 8) . '...');
}
kill 'TERM', $members_pid;
waitpid $members_pid, 0;
$members_pid = 0;
done_testing();
