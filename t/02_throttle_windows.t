# Behaviours 2 and 6: a member that answers 429 is skipped until the window
# its headers name is over (retry-after-ms, Retry-After seconds or date,
# x-ratelimit-reset-*), AOAIThrottleDefault when none is usable, clamped to
# AOAIThrottleMax; when the window ends it takes traffic again at its
# priority without any request having to fail first.  Unusable headers are
# logged once, not per request.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use AOAITest;

my $mock = start_mock(members => [ map { { name => $_ } }
                                   qw(primary secondary gA gB) ]);
my %url = map { $_ => $mock->member_url($_) } $mock->members;

my $gw = start_gateway(conf =>
    balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ],
        inside => [ 'AOAIThrottleDefault 2', 'AOAIThrottleMax 4' ])
  . balancer_conf('garbage', members => [
        [ $url{gA}, lbset => 0, route => 'gA' ],
        [ $url{gB}, lbset => 1, route => 'gB' ] ],
        inside => [ 'AOAIThrottleDefault 200ms' ])
  . <<"EOF");
ProxyPass /garbage/openai balancer://garbage/openai
ProxyPass /openai balancer://aoai/openai
EOF

# One 429 of the given form, then measure how long the primary is skipped.
sub window_for {
    my ($form, $retry_after_ms) = @_;
    $mock->control('primary', { force_status => 429, force_count => 1,
                                retry_after_form => $form,
                                retry_after_ms => $retry_after_ms });
    my $before = $mock->stats('primary')->{requests};
    my $t0 = time;
    my $first = chat($gw);
    is($first->{status}, 200, "$form: the 429 is not what the client gets");
    is(served_by($first), 'secondary',
       "$form: the same call was served by the next member");
    is(served_by(chat($gw)), 'secondary', "$form: the next call skips the primary");
    is($mock->stats('primary')->{requests}, $before + 1,
       "$form: the primary was not asked inside its window");
    my $back;
    while (time - $t0 < 8) {
        if (served_by(chat($gw)) eq 'primary') { $back = time - $t0; last }
        sleep 0.1;
    }
    ok(defined $back, "$form: the primary takes traffic again by itself");
    return $back // 99;
}

my $w = window_for('ms', 1500);
ok($w >= 1.5 && $w < 2.5, "retry-after-ms 1500 parks the member ~1.5 s ($w)");
$w = window_for('seconds', 2000);
ok($w >= 2 && $w < 3, "Retry-After: 2 parks the member ~2 s ($w)");
$w = window_for('date', 3000);
# an HTTP-date has whole seconds: "now + 3 s" is between 2 and 3 s away
ok($w >= 2 && $w < 4, "Retry-After as an HTTP-date parks until that date ($w)");
$w = window_for('reset', 1500);
ok($w >= 1.5 && $w < 2.5, "x-ratelimit-reset-* parks the member ~1.5 s ($w)");
$w = window_for('none', 1500);
ok($w >= 2 && $w < 3, "no header: AOAIThrottleDefault 2 s ($w)");
$w = window_for('huge', 1500);
ok($w >= 4 && $w < 5, "a day-long Retry-After is clamped to AOAIThrottleMax 4 s ($w)");

# Garbage three times in a row: one warning; a usable header re-arms it.
$mock->control('gA', { force_status => 429, retry_after_form => 'garbage' });
for (1 .. 3) {
    my $res = chat($gw, path => "/garbage$CHAT_PATH");
    is(served_by($res), 'gB', "garbage 429 #$_ fails over");
    sleep 0.35;    # past the 200 ms default window
}
is($mock->stats('gA')->{status}{429}, 3, 'gA really answered three 429s');
my @warnings = $gw->error_log =~ /AOAI020: balancer:\/\/garbage: member gA/g;
is(scalar @warnings, 1, 'an unusable header is logged once, not per request');
like($gw->error_log, qr/AOAI020.*gA sent an unusable retry-after-ms header/,
     'the warning names the member and the header');

$gw->stop;
$mock->stop;
done_testing();
