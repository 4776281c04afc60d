# Issue 21, point 1: the module's own balancer page, opened in a real
# headless Chromium (Debian's chromium, driven by npm's playwright-core
# from t/page).
#   - the aoai-balancer-page handler obeys Require like balancer-manager,
#     GET only, self-contained (its CSP lets nothing else load, and the
#     browser requests nothing but the page);
#   - a throttled member shows its state and a countdown that goes down
#     live; the others show theirs; why, bars of what is left, 429s;
#   - the per-minute charts hold the calls and the 429 the test made
#     (sampled by aoai_history);
#   - per-key tokens; a link to BalancerManager;
#   - a screenshot is saved: t/artifacts/32_balancer_page.png.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(time sleep);
use AOAITest;

my $chromium = $ENV{CHROMIUM} || '/usr/bin/chromium';
plan skip_all => "no $chromium (t/run installs Debian's chromium)" unless -x $chromium;
plan skip_all => 'no t/page/node_modules (t/run runs npm ci there)'
    unless -d "$TOP/t/page/node_modules/playwright-core";

my %client_key = (team_a => 'sk-page-team-a-1234');
my $secrets = tempdir('aoai-page-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $keyfile = write_key_file("$secrets/subscription-keys",
                             team_a => $client_key{team_a});

my $mock = start_mock(members => [
    { name => 'primary', quota => '100 100000', set => { limit_headers => 'on' } },
    { name => 'secondary', quota => '50 20000', set => { limit_headers => 'on' } },
    { name => 'spare' } ]);
my %url = map { $_ => $mock->member_url($_) } $mock->members;
my $gw = start_gateway(
    extra_modules => "LoadModule env_module /usr/lib/apache2/modules/mod_env.so\n",
    conf => balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ],
        [ $url{spare}, lbset => 2, route => 'spare', status => '+D' ] ],
        inside => [ 'AOAIThrottleMax 120' ])
  . <<"EOF");
<Location /openai>
    AOAISubscriptionKeyFile $keyfile
</Location>
ProxyPass /aoai-balancer !
ProxyPass /page-elsewhere !
ProxyPass /openai balancer://aoai/openai
<Location /aoai-balancer>
    SetHandler aoai-balancer-page
    SetEnv AOAI_BALANCER_MANAGER /manage/balancers
    Require ip 127.0.0.1
</Location>
<Location /page-elsewhere>
    SetHandler aoai-balancer-page
    Require ip 192.0.2.1
</Location>
EOF

my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 0);
my $page_url = $gw->url . '/aoai-balancer?refresh=30&minutes=15';

# --- Access, method, self-containment -------------------------------------
is($http->get($gw->url . '/page-elsewhere')->{status}, 403,
   'the page obeys Require like balancer-manager');
is($http->request('POST', $page_url)->{status}, 405, 'only GET');
my $res = $http->get($page_url);
is($res->{status}, 200, 'the page is served');
like($res->{headers}{'content-security-policy'} // '', qr/default-src 'none'/,
     'its CSP lets nothing from elsewhere load');
unlike($res->{content}, qr/<(?:script|link|img)[^>]+(?:src|href)=/i,
       'no script, style or image from elsewhere');

# --- Traffic: calls, then a 429 that opens a 90 s window --------------------
my $tokens = 0;
for my $n (1 .. 4) {
    my $call = chat($gw, headers => { 'api-key' => $client_key{team_a} });
    is(served_by($call), 'primary', "call $n served by the primary");
    $tokens += $call->{json}{usage}{total_tokens};
}
$mock->control('primary', { force_status => 429, force_count => 1,
                            retry_after_form => 'seconds',
                            retry_after_ms => 90000 });
my $call = chat($gw, headers => { 'api-key' => $client_key{team_a} });
is(served_by($call), 'secondary', 'the 429 fails over to the secondary');
# Two samples of the history (once a second) after the traffic.
sleep 2.2;

# --- In Chromium ------------------------------------------------------------
my $artifacts = "$TOP/t/artifacts";
make_path($artifacts);
my $shot = "$artifacts/32_balancer_page.png";
unlink $shot;
my $out = `cd $TOP/t/page && timeout 120 node page.mjs '$page_url' '$shot' 2>&1`;
my $seen = eval { JSON::PP->new->decode((grep { /^\{/ } split /\n/, $out)[-1] // '') };
ok($seen, 'Chromium rendered the page') or BAIL_OUT("page.mjs: $out");

is($seen->{status}, 200, 'status 200 in the browser');
is($seen->{title}, 'Azure OpenAI balancers', 'its title');
is_deeply($seen->{problems}, [], 'no script error, nothing refused by the CSP');
is_deeply($seen->{requests}, [$page_url],
          'the browser requested the page and nothing else');
is($seen->{manager}, '/manage/balancers',
   'BalancerManager linked where AOAI_BALANCER_MANAGER says');

my %first = map { $_->{route} => $_ } @{ $seen->{first} };
my %later = map { $_->{route} => $_ } @{ $seen->{later} };
is_deeply([ map { $_->{route} } @{ $seen->{first} } ], [qw(primary secondary spare)],
          'every member, in configuration order');

my $p = $first{primary};
is($p->{state}, 'throttled', 'the throttled member says so');
is($p->{stateColor}, 'rgb(255, 216, 168)', 'in the throttled colour');
sub seconds_of {
    my ($text) = @_;
    return $1 * 60 + $2 if ($text // '') =~ /^(\d+) min (\d+) s$/;
    return $1 if ($text // '') =~ /^(\d+\.\d) s$/;
    return undef;
}
my ($t1, $t2) = (seconds_of($p->{countdown}), seconds_of($later{primary}{countdown}));
ok(defined $t1 && $t1 > 80 && $t1 <= 90,
   "its countdown shows the window's time left ($p->{countdown})");
ok(defined $t2 && $t2 < $t1 && $t1 - $t2 >= 1 && $t1 - $t2 < 3,
   "and counts down live in the browser ($later{primary}{countdown}, 1.5 s later)");
like($p->{why}, qr/answered 429: last 429 at \S+ asked for 90000 ms/,
     'why: the 429 and the window it asked for');
# The forced 429 came while the member's figures said it had room: the
# module's model of its windows is wrong for it, and it falls back to plain
# 429 windows (issue 19); the page says so.
like($p->{why}, qr/requests: 429 windows \(429-while-figures-said-room\)/,
     'why: what the module learned of its windows (here: the fallback)');

my $s = $first{secondary};
is($s->{state}, 'serving', 'the secondary is serving');
is($s->{countdown}, undef, 'with no countdown');
is(scalar @{ $s->{bars} }, 2, 'bars of the requests and tokens it has left');
like($s->{bars}[0], qr/^9\d%$/, "requests left against its limit ($s->{bars}[0])");
is($first{spare}{state}, 'disabled', 'a member disabled in the configuration');

my %chart = map { $_->{kind} => $_ } @{ $p->{charts} };
is($chart{calls}{total}, 5, "the primary's calls chart holds the 5 calls it took");
ok($chart{calls}{bars} >= 1, 'drawn as bars');
is($chart{r429}{total}, 1, 'its 429 chart holds the 429');
is($chart{tokens}{total}, $tokens, 'its tokens chart the tokens it served')
    or diag explain $p->{charts};
like($chart{calls}{title}, qr/last 15 minutes/, '?minutes=15 is the span charted');

my ($key_row) = @{ $seen->{keys} };
is($key_row->[0], 'team_a', 'tokens by subscription key');
is($key_row->[3], 4, 'served by the primary');

ok(-s $shot && -s $shot > 10_000, "a screenshot was saved ($shot)");
open my $png, '<:raw', $shot or die;
read $png, my $magic, 8;
is($magic, "\x89PNG\r\n\x1a\n", 'as a PNG');

$gw->stop;
done_testing();
