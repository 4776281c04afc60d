# Behaviour 8: the client (a test client, like the seed's tryme.py) can see
# which member served, and the access log can record the member, the
# attempts and the members skipped for throttling.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ { name => 'farm0' }, { name => 'farm1' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm0 farm1);

my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{farm0}, lbset => 1, route => 'farm0' ],
        [ $url{farm1}, lbset => 0, route => 'farm1' ] ])
  . balancer_conf('noroute', members => [ $url{farm1} ])
  . <<"EOF");
ProxyPass /quiet/openai balancer://aoai/openai
ProxyPass /renamed/openai balancer://aoai/openai
ProxyPass /noroute/openai balancer://noroute/openai
ProxyPass /openai balancer://aoai/openai
<Location /quiet>
    AOAIBackendHeader Off
</Location>
<Location /renamed>
    AOAIBackendHeader x-served-by
</Location>
EOF

my $res = chat($gw);
is($res->{headers}{'x-aoai-backend'}, 'farm1', 'x-aoai-backend names the route');
is($res->{headers}{'x-mock-member'}, 'farm1', 'and it is the member that answered');

$res = chat($gw, path => "/noroute$CHAT_PATH");
is($res->{headers}{'x-aoai-backend'}, $url{farm1}, 'without a route: the member URL');

$res = chat($gw, path => "/quiet$CHAT_PATH");
is($res->{status}, 200, 'AOAIBackendHeader Off: still served');
ok(!exists $res->{headers}{'x-aoai-backend'}, 'and no header');

$res = chat($gw, path => "/renamed$CHAT_PATH");
is($res->{headers}{'x-served-by'}, 'farm1', 'AOAIBackendHeader renames the header');
ok(!exists $res->{headers}{'x-aoai-backend'}, 'in place of the default one');

$mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 10000 });
chat($gw);
chat($gw);
my @log = access_log_records($gw, 6);
is_deeply([ @{ $log[-2] }{qw(backend attempts skipped)} ], [ 'farm0', 2, 0 ],
          'access log: failover call served by farm0 after 2 attempts');
is_deeply([ @{ $log[-1] }{qw(backend attempts skipped)} ], [ 'farm0', 1, 1 ],
          'access log: next call went straight to farm0, skipping throttled farm1');

$gw->stop;
$mock->stop;
done_testing();
