# Issue 4: what the balancer is doing, where an admin looks.
#   - the stock balancer-manager page leaves a throttled member usable
#     (no Err: mod_proxy would drop its calls in flight); lbset, lbfactor
#     and Disabled edited there take effect on the next request;
#   - server-status (ExtendedStatus On) has a section per aoai balancer,
#     HTML and ?auto;
#   - the aoai-balancer-status handler gives the same as JSON, behind
#     Require;
#   - counters are per member in shared memory: exact across prefork
#     children and kept over a graceful restart;
#   - the access log gets the tokens of JSON and SSE answers, and tokens
#     are counted per subscription key per member.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(time sleep);
use AOAITest;

my %client_key = (team_a => 'sk-obs-team-a-1234', team_b => 'sk-obs-team-b-5678');
my $secrets = tempdir('aoai-obs-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $keyfile = write_key_file("$secrets/subscription-keys", %client_key);

my $mock = start_mock(members => [ { name => 'primary', stream => '4 5' },
                                   { name => 'secondary', stream => '4 5' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary);

my $gw = start_gateway(mpm => 'prefork', conf => "ExtendedStatus On\n"
  . balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary' ] ])
  . <<"EOF");
<Location /openai>
    AOAISubscriptionKeyFile $keyfile
</Location>
ProxyPass /balancer-manager !
ProxyPass /server-status !
ProxyPass /aoai-status !
ProxyPass /aoai-status-elsewhere !
ProxyPass /openai balancer://aoai/openai
<Location /balancer-manager>
    SetHandler balancer-manager
    Require ip 127.0.0.1
</Location>
<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
<Location /aoai-status>
    SetHandler aoai-balancer-status
    Require ip 127.0.0.1
</Location>
<Location /aoai-status-elsewhere>
    SetHandler aoai-balancer-status
    Require ip 192.0.2.1
</Location>
EOF

my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 0);
my $JSON = JSON::PP->new;

sub status_json { get_json($gw->url . '/aoai-status') }
sub call {
    my ($team, %o) = @_;
    return chat($gw, headers => { 'api-key' => $client_key{$team} }, %o);
}
sub page { my $res = $http->get($gw->url . $_[0]); $res }

# The row of one member on the balancer-manager page: its Status cell.
sub manager_status {
    my ($route) = @_;
    my $html = page('/balancer-manager')->{content};
    for my $row (split /<tr>/, $html) {
        next unless $row =~ m{<td>\Q$route\E</td>};
        my @cells = $row =~ m{<td>(.*?)</td>}g;
        # Worker URL, Route, RouteRedir, Factor, Set, Status, ...
        return $cells[5];
    }
    return '';
}

# Changes a member through the stock balancer-manager form, as a browser
# would: POST with the page's nonce and a same-site Referer.
sub manager_edit {
    my ($member_url, %fields) = @_;
    my $html = page('/balancer-manager')->{content};
    my ($nonce) = $html =~ /nonce=([0-9a-f-]+)/ or die "no nonce on the page";
    my $form = join '&', map { "$_=" . $fields{$_} } sort keys %fields;
    my $res = $http->request('POST', $gw->url . '/balancer-manager', {
        headers => { 'content-type' => 'application/x-www-form-urlencoded',
                     'referer' => $gw->url . '/balancer-manager' },
        content => "b=aoai&w=$member_url&nonce=$nonce&$form",
    });
    die "balancer-manager edit: $res->{status}" unless $res->{success};
}

# --- JSON status: shape and access control ----------------------------
my $doc = status_json();
is(scalar @{ $doc->{balancers} }, 1, 'the JSON status lists the aoai balancer');
my $primary = member_status($gw, 'aoai', 'primary');
is($primary->{state}, 'ok', 'a fresh member is ok');
is($primary->{priority}, 0, 'priority is the lbset');
is($primary->{requests}, 0, 'no requests yet');
is(page('/aoai-status-elsewhere')->{status}, 403,
   'the JSON status obeys Require like any handler');

# --- Tokens: access log and per-key accounting ------------------------
my (%expected, %by_key);
my @plan = ((map { ['team_a', 0] } 1 .. 3), (map { ['team_b', 0] } 1 .. 2),
            ['team_a', 1], ['team_b', 1]);
my $n = 0;
for my $call (@plan) {
    my ($team, $stream) = @$call;
    $n++;
    my $res = call($team, content => "call $n " . ('x' x (40 * $n)),
                   $stream ? (stream => 1, include_usage => 1) : ());
    is($res->{status}, 200, "call $n ($team, " . ($stream ? 'SSE' : 'JSON') . ') served');
    my $usage;
    if ($stream) {
        for my $line (split /\n/, $res->{content}) {
            next unless $line =~ /^data: (\{.*)/;
            my $chunk = $JSON->decode($1);
            $usage = $chunk->{usage} if $chunk->{usage};
        }
    }
    else {
        $usage = $res->{json}{usage};
    }
    ok($usage && $usage->{total_tokens}, "call $n: the member reported usage");
    push @{ $expected{lines} }, $usage;
    $by_key{$team}{$_} += $usage->{$_} for qw(prompt_tokens completion_tokens total_tokens);
    $by_key{$team}{served}++;
}
# A stream whose client did not ask for usage: the gateway counts its
# completion from the deltas, a token each here, and estimates its prompt
# from the request, a token per 4 bytes (issue 23, docs/observability.md).
my $unasked = call('team_a', stream => 1);
is($unasked->{status}, 200, 'a stream without include_usage is served');
my $counted = { prompt_tokens => int(length(chat_body(stream => 1)) / 4) + 1,
                completion_tokens => scalar(() = $unasked->{content} =~ /"content":"/g) };
$counted->{total_tokens} = $counted->{prompt_tokens} + $counted->{completion_tokens};
$by_key{team_a}{served}++;
$by_key{team_a}{$_} += $counted->{$_} for qw(prompt_tokens completion_tokens total_tokens);

my @records = grep { $_->{backend} ne '-' }
              access_log_records($gw, scalar(@plan) + 4);
is(scalar @records, scalar(@plan) + 1, 'every call is in the access log');
for my $i (0 .. $#plan) {
    my $u = $expected{lines}[$i];
    is(join('/', @{ $records[$i] }{qw(prompt_tokens completion_tokens total_tokens)}),
       join('/', @{$u}{qw(prompt_tokens completion_tokens total_tokens)}),
       "access log tokens of call " . ($i + 1) . " match the answer's usage");
    is($records[$i]{key}, $plan[$i][0], "access log key label of call " . ($i + 1));
}
is(join('/', @{ $records[-1] }{qw(prompt_tokens completion_tokens total_tokens)}),
   join('/', @{$counted}{qw(prompt_tokens completion_tokens total_tokens)}),
   'a stream without usage: its completion counted, its prompt estimated');

$primary = member_status($gw, 'aoai', 'primary');
my $sum = $counted->{total_tokens};
$sum += $_->{total_tokens} for @{ $expected{lines} };
is($primary->{tokens}{total}, $sum, 'the member counts every token it served');
is($primary->{requests}, scalar(@plan) + 1, 'requests counted exactly across prefork children');
is($primary->{served}, scalar(@plan) + 1, 'served counted');
my %keys = map { $_->{label} => $_ } @{ $primary->{keys} };
for my $team (sort keys %by_key) {
    is($keys{$team}{served}, $by_key{$team}{served}, "$team: answers counted on the member");
    is($keys{$team}{tokens}{$_}, $by_key{$team}{"${_}_tokens"}, "$team: $_ tokens")
        for qw(prompt completion total);
}

# --- A throttle window on every page ----------------------------------
$mock->control('primary', { force_status => 429, force_count => 1,
                            retry_after_form => 'ms', retry_after_ms => 3000 });
my $res = call('team_a');
is(served_by($res), 'secondary', 'the 429 failed over');
my $marked_at = time;
$primary = member_status($gw, 'aoai', 'primary');
is($primary->{state}, 'throttled', 'JSON: the member is throttled');
is($primary->{throttled}, 1, 'JSON: one 429 counted');
is($primary->{failovers}, 1, 'JSON: one failover out counted');
is($primary->{last_retry_after_ms}, 3000, 'JSON: the Retry-After it asked for');
ok($primary->{throttled_for_ms} > 0 && $primary->{throttled_for_ms} <= 3000,
   "JSON: time left in the window ($primary->{throttled_for_ms} ms)");
like($primary->{throttled_until}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'JSON: the window end as an ISO 8601 time');

# Not marked in error on the stock page: mod_proxy takes that flag as
# "drop every connection to it", which would fail the calls already on
# their way to the member (t/27, HTTP/2 bursts).
unlike(manager_status('primary'), qr/\bErr\b/, 'balancer-manager: the throttled member is not put in error');
like(manager_status('primary'), qr/\bOk\b/, '  it stays usable for calls in flight');

my $html = page('/server-status')->{content};
like($html, qr{<h3>balancer://aoai</h3>}, 'server-status: a section for the balancer');
like($html, qr{<td>\Q$url{primary}\E</td><td>primary</td><td>0</td><td>1\.00</td><td>throttled until \d{4}-[^<]*\(\d+ ms\)</td><td>9</td><td>8</td><td>1</td><td>1</td><td>3000 ms at },
     'server-status: member, priority, weight, state, requests, served, 429s, failovers, last Retry-After');
like($html, qr{<td>team_a</td><td>balancer://aoai</td><td>\Q$url{primary}\E</td>},
     'server-status: tokens by subscription key');
my $auto = page('/server-status?auto')->{content};
like($auto, qr{^AOAIMember: balancer=balancer://aoai member=\Q$url{primary}\E route=primary priority=0 weight=1\.00 state=throttled throttled_for_ms=\d+ requests=9 served=8 throttled=1 failovers=1 last_retry_after_ms=3000 prompt_tokens=\d+ completion_tokens=\d+ total_tokens=$primary->{tokens}{total} sessions=0 sessions_open=0$}m,
     'server-status?auto: a machine-readable line per member');
like($auto, qr{^AOAIKeyTokens: balancer=balancer://aoai member=\Q$url{primary}\E key=team_b served=$by_key{team_b}{served} prompt_tokens=$by_key{team_b}{prompt_tokens} completion_tokens=$by_key{team_b}{completion_tokens} total_tokens=$by_key{team_b}{total_tokens}$}m,
     'server-status?auto: a line per key and member');

# The window ends with no traffic at all: the page is right anyway.
sleep(3.3 - (time - $marked_at)) if time - $marked_at < 3.3;
is(member_status($gw, 'aoai', 'primary')->{state}, 'ok', 'JSON: the member is ok again');
is(served_by(call('team_a')), 'primary', 'and it serves again');

# --- Counters survive a graceful restart -------------------------------
my $before = member_status($gw, 'aoai', 'primary');
$gw->graceful;
my $after = member_status($gw, 'aoai', 'primary');
is($after->{$_}, $before->{$_}, "graceful restart keeps $_") for qw(requests served throttled failovers);
is($after->{tokens}{total}, $before->{tokens}{total}, 'graceful restart keeps tokens');
is(scalar @{ $after->{keys} }, 2, 'graceful restart keeps the per-key records');

# --- Edits on the balancer-manager page take effect at once ------------
manager_edit($url{primary}, w_ls => 2);
is(member_status($gw, 'aoai', 'primary')->{priority}, 2, 'lbset edited on the page');
is(served_by(call('team_a')), 'secondary', 'the next request follows the new priority');
manager_edit($url{primary}, w_ls => 1);     # same priority as secondary now
manager_edit($url{primary}, w_lf => 100);
manager_edit($url{secondary}, w_lf => 1);
my %share;
$share{ served_by(call('team_a')) }++ for 1 .. 20;
ok(($share{primary} // 0) >= 18, "lbfactor 100:1 edited on the page steers the load (primary $share{primary} of 20)");
manager_edit($url{primary}, w_status_D => 1);
is(member_status($gw, 'aoai', 'primary')->{state}, 'disabled', 'Disabled on the page shows in the status');
is(served_by(call('team_a')), 'secondary', 'a member disabled on the page is skipped');
manager_edit($url{primary}, w_status_D => 0);
manager_edit($url{secondary}, w_status_D => 1);
is(served_by(call('team_a')), 'primary', 'and taken back when enabled again');

is(scalar(() = $gw->error_log =~ /exit signal/g), 0, 'no child crashed');
$gw->stop;
$mock->stop;
done_testing();
