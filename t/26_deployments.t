# AOAIDeployment: members that serve some deployments, under names of their
# own.
#   - a member that declares deployments serves only those, each under its
#     name at the member (by default the client's); a member that declares
#     none serves every deployment under the client's name;
#   - a call for /deployments/NAME/ goes only to members that serve NAME,
#     first and on failover, and each gets its own name in the path, the
#     rest of the path and the query unchanged;
#   - a deployment no member serves: Azure's 404 DeploymentNotFound from the
#     gateway, no member called, AOAI048 at info;
#   - paths without /deployments/ are not filtered;
#   - bad lines fail apache2 -t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } } qw(east west north) ]);
my %url = map { $_ => $mock->member_url($_) } qw(east west north);
my @members = qw(east west north);

# aoai: east serves gpt-35-turbo; west serves it as gpt35t-0125, and gpt-4o;
# north declares nothing.  twin: the same, with throttle windows of its own.
# strict: every member declares, nobody serves "nope".
my $declarations = <<'EOF';
    AOAIDeployment east gpt-35-turbo
    AOAIDeployment west gpt-35-turbo gpt35t-0125
    AOAIDeployment west gpt-4o
EOF
my @by_priority = ([ $url{east}, lbset => 0, route => 'east' ],
                   [ $url{west}, lbset => 1, route => 'west' ],
                   [ $url{north}, lbset => 2, route => 'north' ]);
my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => \@by_priority, inside => $declarations)
  . balancer_conf('twin', members => \@by_priority, inside => $declarations)
  . balancer_conf('strict', members => \@by_priority,
                  inside => [ 'AOAIDeployment east gpt-35-turbo', 'AOAIDeployment west gpt-4o',
                              'AOAIDeployment north ada' ])
  . <<"EOF");
ProxyPass /twin/openai balancer://twin/openai
ProxyPass /strict/openai balancer://strict/openai
ProxyPass /openai balancer://aoai/openai
EOF

my $query = 'api-version=2024-06-01';
my $calls = 0;
sub call {
    my ($deployment, $prefix, $operation) = @_;
    my $res = chat($gw, path => ($prefix // '') . "/openai/deployments/$deployment/"
                                . ($operation // 'chat/completions') . "?$query");
    my @log = access_log_records($gw, ++$calls);
    $res->{log} = $log[$calls - 1] || {};
    return $res;
}
sub counts { return { map { $_ => $mock->stats($_)->{requests} } @members } }
sub delta {
    my ($before) = @_;
    my $now = counts();
    return { map { $_ => $now->{$_} - $before->{$_} } @members };
}
sub last_path { $mock->stats($_[0])->{last_path} }
sub park {
    my ($member) = @_;
    $mock->control($member, { force_status => 429, force_count => 1, retry_after_ms => 30000 });
}
sub chat_path { "/openai/deployments/$_[0]/chat/completions?$query" }

# ---------------------------------------------------------------------
# Nothing throttled: each deployment goes to its first member that serves it.
my $before = counts();
my $res = call('gpt-35-turbo');
is($res->{status}, 200, 'gpt-35-turbo: 200');
is(served_by($res), 'east', '  from east, the first member');
is(last_path('east'), chat_path('gpt-35-turbo'), '  which got the path unchanged');
is_deeply(delta($before), { east => 1, west => 0, north => 0 }, '  one call, to east');

$before = counts();
$res = call('gpt-4o');
is($res->{status}, 200, 'gpt-4o: 200');
is(served_by($res), 'west', '  from west: east, first by priority, does not serve it');
is(last_path('west'), chat_path('gpt-4o'), '  west got it as gpt-4o, the query kept');
is_deeply(delta($before), { east => 0, west => 1, north => 0 }, '  east was not asked');
is($res->{log}{attempts}, 1, '  at the first attempt');

$before = counts();
$res = call('ada');
is(served_by($res), 'north', 'ada, declared by nobody: north, which declares nothing, serves it');
is(last_path('north'), chat_path('ada'), '  under the client\'s name');
is_deeply(delta($before), { east => 0, west => 0, north => 1 }, '  neither east nor west was asked');

$before = counts();
$res = call('gpt-35-turbo-16k');
is(served_by($res), 'north', 'gpt-35-turbo-16k is not gpt-35-turbo: north');
is_deeply(delta($before), { east => 0, west => 0, north => 1 }, '  east was not asked');

$before = counts();
$res = call('gpt-4o', '', 'embeddings');
is(served_by($res), 'west', 'another operation on gpt-4o (embeddings): west too');
is(last_path('west'), "/openai/deployments/gpt-4o/embeddings?$query", '  the operation kept');

# A path without /deployments/ is not filtered: the first member gets it,
# on a balancer where every member declares as well, and also when the
# query has a /deployments/ in it.
for my $case ([ '', $query ], [ '/strict', $query ], [ '/strict', "$query&next=/deployments/nope/" ]) {
    my ($prefix, $q) = @$case;
    $res = chat($gw, path => "$prefix/openai/models?$q");
    my @log = access_log_records($gw, ++$calls);
    is(served_by($res), 'east', ($prefix || '/') . " /openai/models?$q: passed to east")
        or diag "$res->{status} $res->{content}";
    is(($log[$calls - 1] || {})->{backend}, 'east', '  as the access log says');
    isnt($res->{json}{error}{code} // '', 'DeploymentNotFound', '  not refused by the gateway');
}

# ---------------------------------------------------------------------
# West throttled while east is not: gpt-4o fails over to north (which
# serves everything), never to east.
park('west');
$before = counts();
$res = call('gpt-4o');
is($res->{status}, 200, 'west answers 429 for gpt-4o: the call is served');
is(served_by($res), 'north', '  by north');
is(last_path('north'), chat_path('gpt-4o'), '  under gpt-4o');
is_deeply(delta($before), { east => 0, west => 1, north => 1 },
          '  after west\'s 429; east, the first member and healthy, was not asked');
is($res->{log}{attempts}, 2, '  in two attempts');

$before = counts();
$res = call('gpt-4o');
is(served_by($res), 'north', 'with west in its throttle window, gpt-4o goes to north directly');
is_deeply(delta($before), { east => 0, west => 0, north => 1 }, '  still not to east');
$res = call('gpt-35-turbo');
is(served_by($res), 'east', 'gpt-35-turbo still goes to east');

# ---------------------------------------------------------------------
# twin (its own windows): east answers 429 for gpt-35-turbo; west serves it
# under its own name for it.
park('east');
$before = counts();
$res = call('gpt-35-turbo', '/twin');
is($res->{status}, 200, 'twin: east answers 429 for gpt-35-turbo: the call is served');
is(served_by($res), 'west', '  by west');
is(last_path('west'), chat_path('gpt35t-0125'),
   '  which got /deployments/gpt35t-0125/, its own name, and the same query');
is_deeply(delta($before), { east => 1, west => 1, north => 0 }, '  after east\'s one 429');
is($res->{json}{model}, 'gpt35t-0125', '  (the member answered for gpt35t-0125)');

$before = counts();
$res = call('gpt-35-turbo', '/twin');
is(served_by($res), 'west', 'twin: east in its window, the next gpt-35-turbo goes to west');
like(last_path('west'), qr{/deployments/gpt35t-0125/}, '  as gpt35t-0125 again');
is_deeply(delta($before), { east => 0, west => 1, north => 0 }, '  east not asked');

$res = chat($gw, path => '/twin' . chat_path('gpt-35-turbo') . '&note=/deployments/gpt-35-turbo/x');
my @log = access_log_records($gw, ++$calls);
is(served_by($res), 'west', 'twin: a query with /deployments/gpt-35-turbo/ in it: west');
is(last_path('west'), chat_path('gpt35t-0125') . '&note=/deployments/gpt-35-turbo/x',
   '  the path renamed, the query sent as it came');

park('west');
$before = counts();
$res = call('gpt-35-turbo', '/twin');
is(served_by($res), 'north', 'twin: west answers 429 too: north, which declares nothing, serves gpt-35-turbo');
is(last_path('north'), chat_path('gpt-35-turbo'), '  under the client\'s name, not west\'s');
is_deeply(delta($before), { east => 0, west => 1, north => 1 }, '  after west\'s 429');

# ---------------------------------------------------------------------
# strict: every member declares.
$mock->reset;
$before = counts();
my $errors_before = () = $gw->error_log =~ /AOAI048/g;
for my $deployment ('nope', 'gpt-35-turbo-16k', 'gpt-4') {
    $res = call($deployment, '/strict');
    is($res->{status}, 404, "strict: $deployment, which no member serves: 404");
    like($res->{headers}{'content-type'} // '', qr{^application/json}, '  a JSON body');
    is_deeply($res->{json}, { error => { code => 'DeploymentNotFound',
        message => 'The API deployment for this resource does not exist. If you created the deployment '
                 . 'within the last 5 minutes, please wait a moment and try again.' } },
        "  Azure's DeploymentNotFound") or diag $res->{content};
    is(served_by($res), '(none)', '  no member named in x-aoai-backend');
    is($res->{log}{backend}, '-', '  nor in the access log');
    like($gw->error_log, qr/\[aoai_balancer:info\][^\n]*AOAI048:[^\n]*\Q$deployment\E/,
         "  AOAI048 at info, naming $deployment");
}
is_deeply(delta($before), { east => 0, west => 0, north => 0 }, 'no member was called for them');
is(scalar(() = $gw->error_log =~ /AOAI048/g) - $errors_before, 3, 'one AOAI048 line each');

$before = counts();
$res = call('ada', '/strict');
is(served_by($res), 'north', 'strict: ada goes to north, which declares it');
is_deeply(delta($before), { east => 0, west => 0, north => 1 }, '  skipping east and west');
$res = call('gpt-4o', '/strict');
is(served_by($res), 'west', 'strict: gpt-4o goes to west');

# The only member that serves gpt-35-turbo there answers 429: the client
# gets a 429, and no member that does not serve it is asked.
park('east');
$before = counts();
$res = call('gpt-35-turbo', '/strict');
is($res->{status}, 429, 'strict: east, the only member serving gpt-35-turbo, answers 429: 429');
is_deeply(delta($before), { east => 1, west => 0, north => 0 }, '  west and north were not asked');
$before = counts();
$res = call('gpt-35-turbo', '/strict');
is($res->{status}, 429, '  and while east is in its window: 429 again');
ok($res->{headers}{'retry-after'}, '  with Retry-After');
is_deeply(delta($before), { east => 0, west => 0, north => 0 }, '  without asking any member');

unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed');
$gw->stop;

# ---------------------------------------------------------------------
# Configuration.
sub balancer {
    my ($lines) = @_;
    return balancer_conf('x', members => [ [ 'http://127.0.0.1:9', route => 'a' ],
                                           [ 'http://127.0.0.1:10', route => 'b' ] ],
                         inside => "$lines\n")
         . balancer_conf('y', members => [ [ 'http://127.0.0.1:11', route => 'c' ] ]);
}
my $long = 'x' x 64;
for my $good (
    [ 'names and names at members', "AOAIDeployment a gpt-35-turbo\nAOAIDeployment a gpt-4o gpt4o.2024_05-13\n"
                                   . "AOAIDeployment b gpt-35-turbo gpt35t-0125" ],
    [ 'a 64-character name', "AOAIDeployment a $long $long" ],
) {
    my ($ok, $out) = configtest(balancer($good->[1]));
    ok($ok, "apache2 -t passes: $good->[0]") or diag $out;
}
for my $bad (
    [ "AOAIDeployment nobody gpt-4o",
      qr/AOAIDeployment nobody: no BalancerMember of balancer:\/\/x has route=nobody/ ],
    [ "AOAIDeployment c gpt-4o",    # route=c is a member of balancer://y only
      qr/AOAIDeployment c: no BalancerMember of balancer:\/\/x has route=c/ ],
    [ "AOAIDeployment a gpt/4o", qr/AOAIDeployment\b.*gpt\/4o/ ],
    [ "AOAIDeployment a gpt*4o", qr/AOAIDeployment\b.*gpt\*4o/ ],
    [ "AOAIDeployment a gpt-4o gpt:4o", qr/AOAIDeployment\b.*gpt:4o/ ],
    [ "AOAIDeployment a ${long}y", qr/AOAIDeployment\b.*${long}y/ ],
    [ "AOAIDeployment a gpt-4o ${long}y", qr/AOAIDeployment\b.*${long}y/ ],
    [ "AOAIDeployment a gpt-4o\nAOAIDeployment a gpt-4o", qr/AOAIDeployment\b.*gpt-4o/ ],
    [ "AOAIDeployment a gpt-4o\nAOAIDeployment b gpt-4o\nAOAIDeployment a gpt-4o other",
      qr/AOAIDeployment\b.*gpt-4o/ ],
) {
    (my $name = $bad->[0]) =~ s/\n/; /g;
    my ($ok, $out) = configtest(balancer($bad->[0]));
    ok(!$ok, "apache2 -t fails on: $name");
    like($out, $bad->[1], '  naming AOAIDeployment and what is wrong') or diag $out;
}

$mock->stop;
done_testing();
