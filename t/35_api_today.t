# Issue 18, the API as clients use it today:
#   1  the GA v1 API and the Responses API name the deployment in the
#      body's "model": AOAIDeployment routes by it, and each member is sent
#      its own name for it (the body rewritten, Content-Length right); a
#      call that needs a model and has none gets 400, no member called;
#   6  member errors classified before failover: a 400 (content filter,
#      context_length_exceeded) goes to the client unchanged, never fails
#      over and never counts against the member; a 404 DeploymentNotFound
#      fails over and the member is passed over for that deployment for
#      AOAIThrottleDefault, logged once; a 401 or 403 fails over and is
#      logged at error once per retry interval, never with a key;
#   7  AOAIOperations: only the operations of a list go through (the
#      seed's 2023-12-01-preview inference document, the v1 and Responses
#      paths, conf/aoai-operations.conf); any other call gets 404 in
#      Azure's shape, no member called.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use AOAITest;

my $mock = start_mock(members => [
    { name => 'east', deployments => [qw(gpt-35-turbo gpt-4o)] },
    { name => 'west', deployments => [qw(gpt35t-0125)] },
    { name => 'north' },
    { name => 'south' },
    { name => 'filtered', set => { filter_word => 'FILTERME', context_tokens => 400 } },
    { name => 'spare' },
]);
my %url = map { $_ => $mock->member_url($_) } qw(east west north south filtered spare);

my $gw = start_gateway(conf => <<"EOF");
<Proxy balancer://named>
    BalancerMember $url{east} lbset=0 route=east
    BalancerMember $url{west} lbset=1 route=west
    ProxySet lbmethod=aoai
    AOAIDeployment east gpt-35-turbo
    AOAIDeployment east gpt-4o
    AOAIDeployment west gpt-35-turbo gpt35t-0125
</Proxy>
<Proxy balancer://open>
    BalancerMember $url{east} lbset=0 route=east
    BalancerMember $url{north} lbset=1 route=north
    ProxySet lbmethod=aoai
    AOAIThrottleDefault 2
</Proxy>
<Proxy balancer://errors>
    BalancerMember $url{filtered} lbset=0 route=filtered
    BalancerMember $url{spare} lbset=1 route=spare
    ProxySet lbmethod=aoai
</Proxy>
<Location /ops>
    AOAIOperations $TOP/conf/aoai-operations.conf
</Location>
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
ProxyPass /aoai-status !
ProxyPass /named/openai balancer://named/openai
ProxyPass /open/openai balancer://open/openai
ProxyPass /errors/openai balancer://errors/openai
ProxyPass /ops/openai balancer://named/openai
EOF

my $JSON = JSON::PP->new->canonical->utf8;
sub post {
    my ($path, $body, %headers) = @_;
    return chat($gw, path => $path, body => ref $body ? $JSON->encode($body) : $body,
                headers => \%headers);
}
sub requests { my %n = map { $_ => $mock->stats($_)->{requests} } @_; return \%n }
sub errors_member_status {
    my ($balancer, $route) = @_;
    my ($b) = grep { $_->{name} eq "balancer://$balancer" } @{ get_json($gw->url . '/aoai-status')->{balancers} };
    my ($m) = grep { $_->{route} eq $route } @{ $b->{members} };
    return $m;
}
my $messages = [ { role => 'user', content => 'Hello' } ];

# --- 1. The model in the body -----------------------------------------------
subtest 'v1: the deployment is the body\'s model' => sub {
    my $res = post('/named/openai/v1/chat/completions', { model => 'gpt-35-turbo', messages => $messages });
    is($res->{status}, 200, 'v1 chat completion for gpt-35-turbo: 200');
    is($res->{headers}{'x-aoai-backend'}, 'east', '  from the priority member that serves it');
    is($mock->stats('east')->{last_model}, 'gpt-35-turbo', '  which got the name it declared');

    $res = post('/named/openai/v1/chat/completions', { model => 'gpt-4o', messages => $messages });
    is($res->{headers}{'x-aoai-backend'}, 'east', 'gpt-4o: east, the only member that serves it');

    $mock->control('east', { force_status => 429, force_count => 1, retry_after_ms => 1500 });
    my $body = { model => 'gpt-35-turbo', messages => $messages, temperature => 0.5, extra => "\x{e9}t\x{e9}" };
    $res = post('/named/openai/v1/chat/completions', $body);
    is($res->{status}, 200, 'east throttled: 200');
    is($res->{headers}{'x-aoai-backend'}, 'west', '  from west');
    is($mock->stats('west')->{last_model}, 'gpt35t-0125', "  which got its own name for it in the body's model");
    ok($mock->stats('west')->{status}{200}, '  and parsed the rewritten body (its Content-Length was right)');

    my %before = %{ requests(qw(east west)) };
    $res = post('/named/openai/v1/chat/completions', { messages => $messages });
    is($res->{status}, 400, 'no model: 400');
    is($res->{json}{error}{code}, 'missing_required_parameter', "  in Azure's error shape");
    $res = post('/named/openai/v1/responses', '{"model": 12, "input": "hi"}');
    is($res->{status}, 400, 'a model that is not a string: 400');
    $res = post('/named/openai/v1/chat/completions', { model => 'dall-e-3', messages => $messages });
    is($res->{status}, 404, 'a model no member serves: 404');
    is($res->{json}{error}{code}, 'DeploymentNotFound', '  DeploymentNotFound');
    is_deeply(requests(qw(east west)), \%before, '  no member called for any of them');

    sleep 1.6;
    $res = post('/named/openai/responses?api-version=2025-04-01-preview', { model => 'gpt-35-turbo', input => 'Hello' });
    is($res->{status}, 200, 'the classic Responses path routes by model too');
    is($res->{json}{object}, 'response', '  a response');
    $res = post('/named/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-06-01',
                { messages => $messages });
    is($res->{headers}{'x-aoai-backend'}, 'east', 'path-named deployments work as before');
};

# --- 6. Member errors classified ------------------------------------------
subtest 'a 400 is the client\'s answer' => sub {
    my %before = %{ requests(qw(filtered spare)) };
    my $res = post('/errors/openai/v1/chat/completions',
                   { model => 'gpt-4o', messages => [ { role => 'user', content => 'say FILTERME' } ] });
    is($res->{status}, 400, 'content filter: 400');
    is($res->{json}{error}{code}, 'content_filter', "  the member's own body");
    is($res->{json}{error}{innererror}{code}, 'ResponsibleAIPolicyViolation', '  with its innererror');
    is($res->{headers}{'x-aoai-backend'}, 'filtered', '  from the member that filtered it');
    $res = post('/errors/openai/v1/chat/completions',
                { model => 'gpt-4o', messages => [ { role => 'user', content => 'x' x 4000 } ] });
    is($res->{status}, 400, 'context_length_exceeded: 400');
    is($res->{json}{error}{code}, 'context_length_exceeded', '  unchanged');
    is(requests(qw(spare))->{spare}, $before{spare}, 'no failover for either');
    my $m = errors_member_status('errors', 'filtered');
    is($m->{failovers}, 0, '  and nothing counted against the member');
    is($m->{throttled}, 0, '  no window');
    my ($ok, $out) = configtest("<Location /x>\nAOAIFailoverOn 400 429\n</Location>\n");
    ok(!$ok, 'AOAIFailoverOn 400 fails apache2 -t');
    like($out, qr/AOAIFailoverOn: 400 is the call's own error/, '  saying why') or diag $out;
};

subtest 'DeploymentNotFound fails over, and the member is passed over for it' => sub {
    # east serves only what AOAIMockDeployments lists; the gateway does not
    # know that (balancer://open declares nothing).
    my %before = %{ requests(qw(east north)) };
    my $path = '/open/openai/deployments/ada-002/embeddings?api-version=2024-06-01';
    my $res = post($path, { input => 'hello' });
    is($res->{status}, 200, 'east lacks ada-002: 200');
    is($res->{headers}{'x-aoai-backend'}, 'north', '  from north');
    $res = post($path, { input => 'hello again' });
    is($res->{headers}{'x-aoai-backend'}, 'north', 'the next call for it goes to north at once');
    is(requests('east')->{east} - $before{east}, 1, '  east was asked once');
    $res = post('/open/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01', { messages => $messages });
    is($res->{headers}{'x-aoai-backend'}, 'east', 'east still serves the deployments it has');
    is(scalar(grep { /AOAI061: balancer:\/\/open: member east has no deployment ada-002/ } split /\n/, $gw->error_log),
       1, 'logged once (AOAI061)');
    sleep 2.2;
    $res = post($path, { input => 'later' });
    is($res->{headers}{'x-aoai-backend'}, 'north', 'after AOAIThrottleDefault, east is asked again (and says no again)');
    is(requests('east')->{east} - $before{east}, 3, '  east asked again');
};

subtest '401 and 403 fail over, logged once' => sub {
    for my $case ([ 401, { api_key => 'rotated-key' } ], [ 403, { forbidden => JSON::PP::true } ]) {
        my ($status, $control) = @$case;
        $mock->reset('east', 'north');
        $mock->control('east', $control);
        my $res = post('/open/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01', { messages => $messages });
        is($res->{status}, 200, "east answers $status: 200");
        is($res->{headers}{'x-aoai-backend'}, 'north', '  from north');
        post('/open/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01', { messages => $messages });
    }
    like($gw->error_log, qr/\[aoai_balancer:error\].*AOAI062: balancer:\/\/open: member east refused the gateway's credential \(401\)/,
         'logged at error, naming the member');
    my @lines = grep { /AOAI062/ } split /\n/, $gw->error_log;
    is(scalar @lines, 1, 'once per retry interval, not per call (four refusals, the 403s within the 401\'s interval)');
    unlike($gw->error_log, qr/rotated-key/, 'no key in the log');
    $mock->reset('east', 'north');
};

# --- 7. The operations the seed's API imports -----------------------------
subtest 'AOAIOperations' => sub {
    my %before = %{ requests(qw(east west)) };
    my $res = post('/ops/openai/deployments/gpt-35-turbo/chat/completions?api-version=2023-12-01-preview',
                   { messages => $messages });
    is($res->{status}, 200, 'a listed operation (chat completions): 200');
    $res = post('/ops/openai/v1/chat/completions', { model => 'gpt-4o', messages => $messages });
    is($res->{status}, 200, 'v1 chat completions: listed');
    $res = post('/ops/openai/v1/responses', { model => 'gpt-4o', input => 'hi' });
    is($res->{status}, 200, 'v1 responses: listed');
    my $after = requests(qw(east west));
    $res = post('/ops/openai/deployments/gpt-35-turbo/fine-tunes?api-version=2023-12-01-preview', { training_file => 'x' });
    is($res->{status}, 404, 'an operation the list lacks: 404');
    is($res->{json}{error}{code}, '404', "  in Azure's shape");
    is($res->{json}{error}{message}, 'Resource not found', '  Resource not found');
    is_deeply(requests(qw(east west)), $after, '  no member called');
    my ($ok, $out) = configtest("<Location /x>\nAOAIOperations $TOP/conf/aoai-operations.conf\n</Location>\n");
    ok($ok, 'conf/aoai-operations.conf passes apache2 -t') or diag $out;
    my $bad = "$gw->{dir}/bad-ops";
    open my $fh, '>', $bad or die;
    print $fh "POST /openai/v1/chat/completions\nFETCH /openai/v1/models\n";
    close $fh;
    ($ok, $out) = configtest("<Location /x>\nAOAIOperations $bad\n</Location>\n");
    ok(!$ok, 'a bad operations file fails apache2 -t');
    like($out, qr/AOAIOperations \Q$bad\E:2: 'FETCH' is not an HTTP method/, '  naming the file, the line and why') or diag $out;
};

$gw->stop;
$mock->stop;
done_testing();
