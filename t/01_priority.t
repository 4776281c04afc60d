# Behaviour 1: members are ranked by priority (lbset, lower first), spread
# by lbfactor inside one priority, and hot-standby / disabled members keep
# their stock meaning.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } }
                                   qw(farm0 farm1 farmD wA wB sA sH) ]);
my %url = map { $_ => $mock->member_url($_) } $mock->members;

# aoai: the seed's two farms, priority 0 (farm1) preferred to priority 1.
my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{farm0}, lbset => 1, route => 'farm0' ],
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farmD}, lbset => 0, route => 'farmD', status => '+D' ] ])
  . balancer_conf('weighted', members => [
        [ $url{wA}, lbset => 0, route => 'wA', loadfactor => 1 ],
        [ $url{wB}, lbset => 0, route => 'wB', loadfactor => 3 ] ])
  . balancer_conf('standby', members => [
        [ $url{sA}, lbset => 0, route => 'sA' ],
        [ $url{sH}, lbset => 0, route => 'sH', status => '+H' ] ])
  . <<"EOF");
ProxyPass /weighted/openai balancer://weighted/openai
ProxyPass /standby/openai balancer://standby/openai
ProxyPass /openai balancer://aoai/openai
EOF

my @served = map { served_by(chat($gw)) } 1 .. 6;
is_deeply(\@served, [('farm1') x 6],
          'every call goes to the priority-0 member while it has quota');
is($mock->stats('farm0')->{requests}, 0, 'the priority-1 member got nothing');
is($mock->stats('farmD')->{requests}, 0, 'a disabled member gets nothing');

my %count;
$count{ served_by(chat($gw, path => "/weighted$CHAT_PATH")) }++
    for 1 .. 8;
is($count{wA}, 2, 'loadfactor=1 member serves 2 of 8');
is($count{wB}, 6, 'loadfactor=3 member serves 6 of 8');
is($mock->stats('wA')->{requests} + $mock->stats('wB')->{requests}, 8,
   'the mocks saw exactly the 8 calls');

my $res = chat($gw, path => "/standby$CHAT_PATH");
is(served_by($res), 'sA', 'hot standby idle while sA is up');
$mock->control('sA', { force_status => 429, retry_after_ms => 5000 });
$res = chat($gw, path => "/standby$CHAT_PATH");
is($res->{status}, 200, 'throttled sA: the call still succeeds');
is(served_by($res), 'sH',
   'the hot standby takes over when no regular member is left');

# With farm1 throttled the priority-1 member takes over.
$mock->control('farm1', { force_status => 429, force_count => 1,
                          retry_after_ms => 5000 });
@served = map { served_by(chat($gw)) } 1 .. 3;
is_deeply(\@served, [('farm0') x 3], 'priority 1 serves while priority 0 is throttled');
is($mock->stats('farm1')->{requests}, 7,
   'the throttled member was asked once, not on every call');

$gw->stop;
$mock->stop;
done_testing();
