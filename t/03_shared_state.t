# Behaviour 3: throttle windows live in shared memory.  A 429 seen by one
# child process steers the next request in another child, and a graceful
# restart (apachectl -k graceful) keeps the window.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;

my $mock = start_mock(members => [ { name => 'primary' }, { name => 'secondary' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary);

# prefork: one connection is one process, so holding a keep-alive
# connection open pins a child and the next connection lands elsewhere.
my $gw = start_gateway(mpm => 'prefork', conf => "KeepAliveTimeout 20\n"
  . balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ],
        inside => [ 'AOAIThrottleMax 60' ])
  . "ProxyPass /openai balancer://aoai/openai\n");

$mock->control('primary', { force_status => 429, force_count => 1,
                            retry_after_ms => 30000 });
my $pinned = raw_connect($gw);
my $first = raw_request($pinned);
is($first->{status}, 200, 'first call succeeds');
is(served_by($first), 'secondary', 'after a 429 from the primary');

# $pinned stays open: its child is busy waiting on it.
my $other = raw_connect($gw);
my $second = raw_request($other);
is(served_by($second), 'secondary',
   'a call on another connection also goes to the secondary');
my @log = access_log_records($gw, 2);
isnt($log[1]{pid}, $log[0]{pid}, "it was served by another child ($log[0]{pid} vs $log[1]{pid})");
is($log[1]{skipped}, 1, 'that child skipped the throttled primary');
is($log[1]{attempts}, 1, 'without trying it');
is($mock->stats('primary')->{requests}, 1, 'the primary was asked once in all');
close $pinned;
close $other;

$gw->graceful;
my $after = chat($gw);
is(served_by($after), 'secondary',
   'after a graceful restart the window still holds');
@log = access_log_records($gw, 3);
ok(!grep({ $_->{pid} == $log[-1]{pid} } @log[0 .. $#log - 1]),
   'served by a child of the new generation');
is($mock->stats('primary')->{requests}, 1, 'the primary is still left alone');
unlike($gw->error_log, qr/exit signal|AH00052/, 'no child crashed');

$gw->stop;
$mock->stop;
done_testing();
