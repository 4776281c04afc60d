# Behaviour 5: when no member is left the client gets Azure's error shape:
# 429 with Retry-After (ceil seconds) and retry-after-ms of the soonest
# window end, or 503 when the last failure was a 5xx or a connection error.
# Never a 500 because a member was busy (openai-apim-lb issue #29).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX qw(ceil);
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } } qw(a b c d) ]);
my %url = map { $_ => $mock->member_url($_) } qw(a b c d);

my $gw = start_gateway(conf =>
    balancer_conf('throttled', members => [
        [ $url{a}, lbset => 0, route => 'a' ],
        [ $url{b}, lbset => 1, route => 'b' ] ])
  . balancer_conf('broken', members => [
        [ $url{c}, lbset => 0, route => 'c' ],
        [ $url{d}, lbset => 1, route => 'd' ] ])
  . <<"EOF");
ProxyPass /broken/openai balancer://broken/openai
ProxyPass /openai balancer://throttled/openai
EOF

$mock->control('a', { force_status => 429, retry_after_ms => 5000 });
$mock->control('b', { force_status => 429, retry_after_ms => 3000 });
my $res = chat($gw);
is($res->{status}, 429, 'every member throttled: 429');
is($res->{headers}{'content-type'}, 'application/json', 'as JSON');
is($res->{json}{error}{code}, '429', "in Azure's error shape");
like($res->{json}{error}{message}, qr/retry after 3 seconds/i,
     'the message says when to come back');
my $ms = $res->{headers}{'retry-after-ms'};
ok($ms > 2500 && $ms <= 3000, "retry-after-ms is the soonest window end ($ms)");
is($res->{headers}{'retry-after'}, ceil($ms / 1000), 'Retry-After is its ceiling in seconds');
ok(!exists $res->{headers}{'x-aoai-backend'}, 'no member is named as having served');

$res = chat($gw);
is($res->{status}, 429, 'a second call inside the windows: 429 again');
is($mock->stats('a')->{requests} + $mock->stats('b')->{requests}, 2,
   'without asking either throttled member again');
my @log = access_log_records($gw, 2);
is($log[-1]{attempts}, 0, 'the access log shows no attempt');
is($log[-1]{skipped}, 2, 'and two members skipped for throttling');
unlike($gw->error_log, qr/AH01170/,
       "no 'All workers are in error state' per request for throttled members");

$mock->control('c', { force_status => 500 });
$mock->control('d', { force_status => 502 });
$res = chat($gw, path => "/broken$CHAT_PATH");
is($res->{status}, 503, 'every member failing with 5xx: 503, never 500');
is($res->{json}{error}{code}, '503', "in Azure's error shape");
ok(!exists $res->{headers}{'retry-after'}, 'no window known: no Retry-After');

# priority 0 throttled, priority 1 failing: the last failure decides
$mock->control('c', { force_status => 429, retry_after_ms => 4000 });
$res = chat($gw, path => "/broken$CHAT_PATH");
is($res->{status}, 503, 'last failure a 5xx: 503');
ok($res->{headers}{'retry-after'} >= 3 && $res->{headers}{'retry-after'} <= 4,
   'with Retry-After of the window that is open');

$gw->stop;
$mock->stop;
done_testing();
