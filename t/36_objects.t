# Issue 18, objects stay where they were made: responses, files, threads,
# batches... exist only in the resource that made them.
#   2  an answer that makes an object records its member (JSON, or a
#      stream's response.created); a later call that names it, in its path
#      or its body, goes to that member whatever its priority: while that
#      member is throttled the client gets a 429 with its window, never
#      another member's 404; ids of two members: 400; a DELETE forgets;
#   3  ids nobody knows: the members are asked in priority order, moving on
#      only on "no such object" (404, 400 previous_response_not_found), and
#      where one is found is recorded;
#   4  lists go to one member, by priority;
#      the openai SDK (Node) drives Responses, files and batches end to end,
#      authenticated with a subscription key as the v1 clients send it
#      (Authorization: Bearer); two gateways sharing a redis-server find
#      each other's objects.
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

plan skip_all => 'node and t/sdk/node_modules are needed (t/run installs them)'
    unless `which node` && -d "$TOP/t/sdk/node_modules/openai";

my $key = 'sk-objects-0a1b2c3d4e';
my $secrets = tempdir('aoai-objects-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
write_key_file("$secrets/keys", sdk => $key);

my $mock = start_mock(members => [ { name => 'farm1' }, { name => 'farm0' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0);
my $balancer = <<"EOF";
<Proxy balancer://aoai>
    BalancerMember $url{farm1} lbset=0 route=farm1
    BalancerMember $url{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
</Proxy>
<Location /keyed>
    AOAISubscriptionKeyFile $secrets/keys
</Location>
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
ProxyPass /aoai-status !
ProxyPass /keyed/openai balancer://aoai/openai
ProxyPass /openai balancer://aoai/openai
EOF
my $gw = start_gateway(conf => $balancer);

my $JSON = JSON::PP->new->canonical->utf8;
my $http = HTTP::Tiny->new(timeout => 20, keep_alive => 0);
sub sdk {
    my ($step, @args) = @_;
    my $out = `node $TOP/t/sdk/objects.mjs @{[ $gw->url ]}/keyed $key $step @args 2>&1`;
    my $record = eval { $JSON->decode((split /\n/, $out)[-1]) } || { error => "no JSON: $out" };
    return $record;
}
sub call {
    my ($method, $path, $body, $server) = @_;
    my $res = $http->request($method, ($server // $gw)->url . $path, {
        headers => { 'content-type' => 'application/json' },
        defined $body ? (content => $JSON->encode($body)) : () });
    $res->{json} = eval { $JSON->decode($res->{content}) };
    return $res;
}
sub direct {    # to a member itself, as another gateway or the portal would
    my ($member, $path, $body) = @_;
    my $res = $http->request('POST', $mock->member_url($member) . $path, {
        headers => { 'content-type' => 'application/json' }, content => $JSON->encode($body) });
    return eval { $JSON->decode($res->{content}) } || {};
}
sub asked { my %n = map { $_ => $mock->stats($_)->{requests} } qw(farm1 farm0); \%n }
# A 429 window on a member, opened through the gateway by a chat call.
sub throttle {
    my ($member, $ms, $server) = @_;
    $mock->control($member, { force_status => 429, force_count => 1, retry_after_ms => $ms });
    my $res = chat($server // $gw);
    die "no window opened on $member" unless ($res->{headers}{'x-aoai-backend'} // '') ne $member;
    return time + $ms / 1000;
}
sub wait_out { my ($until) = @_; sleep($until - time + 0.1) if $until > time }

subtest 'the openai SDK: responses stay with their member' => sub {
    my $made = sdk('create', 'gpt-4o');
    is($made->{backend}, 'farm1', 'a response created through the gateway (key as a bearer token), on farm1');
    like($made->{id}, qr/^resp_/, "  its id: $made->{id}");

    my $until = throttle('farm1', 6000);
    my $before = asked();
    my $got = sdk('retrieve', $made->{id});
    is($got->{error}, 429, 'retrieved while farm1 is throttled: 429, not farm0\'s 404');
    ok($got->{retry_after} && $got->{retry_after} <= 6, "  with farm1's window ($got->{retry_after} s)");
    my $chain = sdk('chain', $made->{id}, 'gpt-4o');
    is($chain->{error}, 429, 'previous_response_id while farm1 is throttled: 429, not previous_response_not_found');
    is_deeply(asked(), $before, '  no member was asked for either');

    wait_out($until);
    $got = sdk('retrieve', $made->{id});
    is($got->{backend}, 'farm1', 'after the window: retrieved from farm1');
    $chain = sdk('chain', $made->{id}, 'gpt-4o');
    is($chain->{backend}, 'farm1', 'and chained on farm1');
    is($chain->{previous}, $made->{id}, '  with its previous response');

    # Made on farm0 while farm1 was throttled: the chain stays on farm0
    # once farm1 is back, priority notwithstanding.
    $until = throttle('farm1', 1500);
    my $elsewhere = sdk('create', 'gpt-4o');
    is($elsewhere->{backend}, 'farm0', 'created while farm1 is throttled: on farm0');
    wait_out($until);
    $chain = sdk('chain', $elsewhere->{id}, 'gpt-4o');
    is($chain->{backend}, 'farm0', 'farm1 back: the chain still goes to farm0, which holds it');
    is(sdk('retrieve', $chain->{id})->{backend}, 'farm0', '  and so does the next response of the chain');

    my $streamed = sdk('stream', 'gpt-4o');
    ok($streamed->{completed}, 'a streamed response');
    is(sdk('retrieve', $streamed->{id})->{backend}, 'farm1', '  recorded from its response.created event');
};

subtest 'the openai SDK: files and batches' => sub {
    my $until = throttle('farm1', 2000);
    my $file = sdk('upload');
    is($file->{backend}, 'farm0', 'a file uploaded while farm1 is throttled: on farm0');
    wait_out($until);
    my $got = sdk('file', $file->{id});
    is($got->{backend}, 'farm0', 'farm1 back: the file and its content come from farm0');
    like($got->{content}, qr/custom_id/, '  its content');
    my $batch = sdk('batch', $file->{id});
    is($batch->{backend}, 'farm0', 'a batch naming it in input_file_id goes to farm0');
    is($batch->{input_file_id}, $file->{id}, '  which accepts the file');
};

subtest 'threads, deletes, ids of two members' => sub {
    my $thread = call('POST', '/openai/threads', { messages => [ { role => 'user', content => 'hi' } ] });
    is($thread->{headers}{'x-aoai-backend'}, 'farm1', 'a thread, on farm1');
    my $until = throttle('farm1', 1500);
    my $message = call('POST', "/openai/threads/$thread->{json}{id}/messages", { role => 'user', content => 'more' });
    is($message->{status}, 429, 'a message to it while farm1 is throttled: 429');
    wait_out($until);
    $message = call('POST', "/openai/threads/$thread->{json}{id}/messages", { role => 'user', content => 'more' });
    is($message->{headers}{'x-aoai-backend'}, 'farm1', 'then to farm1');

    $until = throttle('farm1', 1500);
    my $other = call('POST', '/openai/v1/vector_stores', { name => 'docs' });
    is($other->{headers}{'x-aoai-backend'}, 'farm0', 'a vector store, on farm0');
    wait_out($until);
    my $before = asked();
    my $both = call('POST', "/openai/threads/$thread->{json}{id}/runs",
                    { assistant_id => 'asst_none0000', tool_resources => { file_search => { vector_store_ids => [ $other->{json}{id} ] } } });
    is($both->{status}, 400, 'a call naming a thread of farm1 and a vector store of farm0: 400');
    like($both->{json}{error}{message}, qr/live in different resources/, "  saying so, in Azure's shape");
    is_deeply(asked(), $before, '  no member asked');

    my $gone = call('DELETE', "/openai/threads/$thread->{json}{id}");
    is($gone->{headers}{'x-aoai-backend'}, 'farm1', 'the thread deleted on farm1');
    $before = asked();
    my $after = call('GET', "/openai/threads/$thread->{json}{id}");
    is($after->{status}, 404, 'then asking for it: 404');
    is_deeply([ map { asked()->{$_} - $before->{$_} } qw(farm1 farm0) ], [ 1, 1 ],
              '  both members asked (it was forgotten), the last one\'s answer');
};

subtest 'ids nobody knows: the members in turn' => sub {
    # Made on farm0 directly, as before the gateway ran.
    my $response = direct('farm0', '/openai/v1/responses', { model => 'gpt-4o', input => 'old' });
    like($response->{id}, qr/^resp_/, "a response made on farm0 behind the gateway's back");
    my $before = asked();
    my $res = call('GET', "/openai/v1/responses/$response->{id}");
    is($res->{status}, 200, 'retrieved through the gateway: 200');
    is($res->{headers}{'x-aoai-backend'}, 'farm0', '  from farm0');
    is(asked()->{farm1} - $before->{farm1}, 1, '  after farm1 said it has none');
    $res = call('GET', "/openai/v1/responses/$response->{id}");
    is($res->{headers}{'x-aoai-backend'}, 'farm0', 'asked again: farm0 at once');
    is(asked()->{farm1} - $before->{farm1}, 1, '  farm1 not asked again: recorded');

    my $old = direct('farm0', '/openai/v1/responses', { model => 'gpt-4o', input => 'older' });
    $res = call('POST', '/openai/v1/responses', { model => 'gpt-4o', input => 'next', previous_response_id => $old->{id} });
    is($res->{status}, 200, 'previous_response_id nobody knows: 200');
    is($res->{headers}{'x-aoai-backend'}, 'farm0', '  farm1 said previous_response_not_found, farm0 had it');

    my $held = direct('farm0', '/openai/v1/responses', { model => 'gpt-4o', input => 'held' });
    my $until = throttle('farm0', 2000);
    $res = call('GET', "/openai/v1/responses/$held->{id}");
    is($res->{status}, 429, 'not on farm1, and farm0 throttled: 429 (farm0 may hold it), not 404');
    like($res->{headers}{'retry-after'} // '', qr/^[12]$/, "  with farm0's window");
    wait_out($until);
};

subtest 'lists go to one member' => sub {
    my $before = asked();
    my $res = call('GET', '/openai/files');
    is($res->{status}, 200, 'GET /openai/files: 200');
    is($res->{headers}{'x-aoai-backend'}, 'farm1', '  from the priority member');
    is_deeply([ map { asked()->{$_} - $before->{$_} } qw(farm1 farm0) ], [ 1, 0 ], '  only');
    ok(!grep({ ($_->{id} // '') =~ /^file-/ && 0 } @{ $res->{json}{data} || [] }), '  (its own files only)');
};

subtest 'two gateways, one redis: each knows the other\'s objects' => sub {
    plan skip_all => 'redis-server is needed (t/run installs it)' unless `which redis-server`;
    my $redis = start_redis();
    my $cache = "AOAISharedCache " . $redis->spec . "\n";
    my $mods = "LoadModule socache_redis_module /usr/lib/apache2/modules/mod_socache_redis.so\n";
    my %g = map { $_ => start_gateway(name => "objects$_", extra_modules => $mods, conf => $cache . $balancer) } qw(A B);
    my $until = throttle('farm1', 1500, $g{A});
    my $made = call('POST', '/openai/v1/responses', { model => 'gpt-4o', input => 'shared' }, $g{A});
    is($made->{headers}{'x-aoai-backend'}, 'farm0', 'made through A, on farm0');
    wait_out($until + 0.5);
    my $before = asked();
    my $got = call('GET', "/openai/v1/responses/$made->{json}{id}", undef, $g{B});
    is($got->{status}, 200, 'retrieved through B: 200');
    is($got->{headers}{'x-aoai-backend'}, 'farm0', '  from farm0');
    is(asked()->{farm1} - $before->{farm1}, 0, '  without asking farm1: B read where it lives from redis');
    $_->stop for values %g;
    $redis->stop;
};

my $status = get_json($gw->url . '/aoai-status');
$gw->stop;
unlike($gw->error_log . $gw->log_text('access_log'), qr/\Q$key\E/, 'the key reached no log');
done_testing();
