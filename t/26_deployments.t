# AOAIDeployment: members that serve some deployments, under names of their
# own.
#   - a call goes only to members that serve its deployment, on first try
#     and on failover, and each member gets its own name for it in the path
#     (the query kept);
#   - a member that declares nothing serves every deployment as named;
#   - a deployment no member serves: Azure's 404 from the gateway, no member
#     called;
#   - paths without a deployment are not filtered;
#   - bad lines fail apache2 -t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } } qw(east west north) ]);
my %url = map { $_ => $mock->member_url($_) } qw(east west north);

my $gw = start_gateway(conf => <<"EOF");
<Proxy balancer://aoai>
    BalancerMember $url{east} lbset=0 route=east
    BalancerMember $url{west} lbset=1 route=west
    BalancerMember $url{north} lbset=2 route=north
    ProxySet lbmethod=aoai
    AOAIDeployment east gpt-35-turbo
    AOAIDeployment west gpt-35-turbo gpt35t-0125
    AOAIDeployment west gpt-4o
</Proxy>
<Proxy balancer://strict>
    BalancerMember $url{east} lbset=0 route=east
    BalancerMember $url{west} lbset=1 route=west
    ProxySet lbmethod=aoai
    AOAIDeployment east gpt-35-turbo
    AOAIDeployment west gpt-4o
</Proxy>
ProxyPass /strict/openai balancer://strict/openai
ProxyPass /openai balancer://aoai/openai
EOF

my $query = 'api-version=2024-06-01';
sub call {
    my ($deployment, $prefix) = @_;
    return chat($gw, path => ($prefix // '') . "/openai/deployments/$deployment/chat/completions?$query");
}
sub requests { $mock->stats($_[0])->{requests} }
sub last_path { $mock->stats($_[0])->{last_path} }
sub park {
    my ($member) = @_;
    $mock->control($member, { force_status => 429, force_count => 1, retry_after_ms => 20000 });
}

# gpt-35-turbo: east by priority, under its own name.
my $res = call('gpt-35-turbo');
is($res->{headers}{'x-aoai-backend'}, 'east', 'gpt-35-turbo goes to east first');
is(last_path('east'), "/openai/deployments/gpt-35-turbo/chat/completions?$query",
   '  under the same name');

# gpt-4o: only west serves it (north declares nothing, so serves it too, last).
$res = call('gpt-4o');
is($res->{headers}{'x-aoai-backend'}, 'west', 'gpt-4o skips east, which does not serve it');
is(last_path('west'), "/openai/deployments/gpt-4o/chat/completions?$query", '  west calls it gpt-4o');
is(requests('east'), 1, '  east was not asked');

# east throttled: gpt-35-turbo fails over to west, which calls it gpt35t-0125.
park('east');
$res = call('gpt-35-turbo');
is($res->{status}, 200, 'east answers 429 for gpt-35-turbo: the call is served');
is($res->{headers}{'x-aoai-backend'}, 'west', '  by west');
is(last_path('west'), "/openai/deployments/gpt35t-0125/chat/completions?$query",
   '  under west\'s own name for it, the query kept');
is(requests('east'), 2, '  after east\'s one 429');

# west throttled too: gpt-35-turbo goes to north, which declares nothing.
park('west');
$res = call('gpt-4o');
is($res->{headers}{'x-aoai-backend'}, 'north', 'west throttled as well: gpt-4o goes to north, which serves everything');
is(last_path('north'), "/openai/deployments/gpt-4o/chat/completions?$query", '  under the client\'s name');
my $east_before = requests('east');
$res = call('ada');
is($res->{headers}{'x-aoai-backend'}, 'north', 'a deployment only north serves goes to north');
is(requests('east'), $east_before, '  east, which does not serve it, was not asked');

# A deployment nobody serves, where every member declares.
my %before = map { $_ => requests($_) } qw(east west north);
$res = call('nope', '/strict');
is($res->{status}, 404, 'a deployment no member serves: 404');
is_deeply($res->{json}, { error => { code => 'DeploymentNotFound',
    message => 'The API deployment for this resource does not exist. If you created the deployment '
             . 'within the last 5 minutes, please wait a moment and try again.' } },
    "  in Azure's shape");
is_deeply({ map { $_ => requests($_) } qw(east west north) }, \%before, '  no member was called');
like($gw->error_log, qr/AH10948: balancer:\/\/strict: no member serves deployment nope/, '  AH10948 says why');

# The only member that serves it answers 429: the client gets the 429,
# never a member that does not serve the deployment.
park('east');
my $west_before = requests('west');
$res = call('gpt-35-turbo', '/strict');
is($res->{status}, 429, 'the only member serving gpt-35-turbo on strict answers 429: the client gets 429');
is(requests('west'), $west_before, '  west, which does not serve it there, was not asked');

# A path without a deployment is not filtered.
$mock->reset;
$res = chat($gw, path => "/strict/openai/models?$query");
ok($res->{headers}{'x-aoai-backend'}, 'a path without /deployments/ is sent to a member (whatever it answers)')
    or diag "$res->{status} $res->{content}";
isnt($res->{json}{error}{code} // '', 'DeploymentNotFound', '  not refused by the gateway');

# Bad lines.
for my $case (
    [ "AOAIDeployment nobody gpt-4o", qr/AOAIDeployment nobody: no BalancerMember of balancer:\/\/x has route=nobody/ ],
    [ "AOAIDeployment a gpt/4o", qr/AOAIDeployment a: 'gpt\/4o' is not a deployment name/ ],
    [ "AOAIDeployment a gpt-4o " . ('x' x 65), qr/AOAIDeployment a: 'x{65}' is not a deployment name/ ],
    [ "AOAIDeployment a gpt-4o\nAOAIDeployment a gpt-4o other", qr/AOAIDeployment a gpt-4o: this member already declares that deployment/ ],
) {
    my ($ok, $out) = configtest("<Proxy balancer://x>\nBalancerMember http://127.0.0.1:9 route=a\n"
                                . "ProxySet lbmethod=aoai\n$case->[0]\n</Proxy>\n");
    ok(!$ok, "apache2 -t fails on: " . ($case->[0] =~ s/\n/; /r));
    like($out, $case->[1], '  naming the directive and why') or diag $out;
}

$gw->stop;
$mock->stop;
done_testing();
