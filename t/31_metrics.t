# Issue 21, point 2: Prometheus metrics.
#   - the aoai-balancer-metrics handler serves the text exposition format,
#     behind Require like any handler, GET only;
#   - per member: requests, served, 429s, failovers, seconds throttled,
#     the open window's end and what is left of it, remaining requests and
#     tokens, tokens by kind, Realtime sessions; per key label: calls and
#     tokens; the figures are the ones the calls made;
#   - `promtool check metrics` (Debian's prometheus package) finds nothing
#     to say about it;
#   - a real Prometheus, started here on 127.0.0.1, scrapes it, and a
#     series is read back through its HTTP API.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);
use AOAITest;

for my $tool (qw(promtool prometheus)) {
    plan skip_all => "$tool is missing (t/run installs Debian's prometheus)"
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}

my %client_key = (team_a => 'sk-metrics-team-a-1234',
                  team_b => 'sk-metrics-team-b-5678');
my $secrets = tempdir('aoai-metrics-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $keyfile = write_key_file("$secrets/subscription-keys", %client_key);

my $mock = start_mock(members => [ { name => 'primary', quota => '100 100000',
                                     set => { limit_headers => 'on' } },
                                   { name => 'secondary' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(primary secondary);

# A Realtime (WebSocket) member, from t/ws, when its node_modules are there.
my $realtime = `which node` && -d "$TOP/t/ws/node_modules/ws";
my ($rt_port, $rt_pid, $rt) = (free_port());
if ($realtime) {
    $rt_pid = open($rt, '-|', 'node', "$TOP/t/ws/member.mjs", "rt:$rt_port:rt-member-key")
        or die "node: $!";
    die "the Realtime member did not start" unless (<$rt> // '') =~ /ready/;
    $ENV{AOAI_RT_KEY} = 'rt-member-key';
}
END { kill 'TERM', $rt_pid if $rt_pid }
my $rt_conf = $realtime ? balancer_conf('rt', members => [
        [ "http://127.0.0.1:$rt_port", route => 'rt' ] ],
        inside => [ 'AOAIMemberCredential rt api-key env:AOAI_RT_KEY' ])
    . "ProxyPass /rt/openai balancer://rt/openai\n" : '';

my $gw = start_gateway(conf => $rt_conf . balancer_conf('aoai', members => [
        [ $url{primary}, lbset => 0, route => 'primary' ],
        [ $url{secondary}, lbset => 1, route => 'secondary', loadfactor => 50 ] ],
        inside => [ 'AOAIThrottleMax 60' ])
  . <<"EOF");
<Location /openai>
    AOAISubscriptionKeyFile $keyfile
</Location>
<Location /rt/openai>
    AOAISubscriptionKeyFile $keyfile
</Location>
ProxyPass /aoai-metrics !
ProxyPass /metrics-elsewhere !
ProxyPass /openai balancer://aoai/openai
<Location /aoai-metrics>
    SetHandler aoai-balancer-metrics
    Require ip 127.0.0.1
</Location>
<Location /metrics-elsewhere>
    SetHandler aoai-balancer-metrics
    Require ip 192.0.2.1
</Location>
EOF

my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 0);
my $JSON = JSON::PP->new;

# name{labels} => value, for the samples whose labels include %want.
sub scrape {
    my $res = $http->get($gw->url . '/aoai-metrics');
    die "metrics: $res->{status}" unless $res->{success};
    return $res;
}
sub samples {
    my ($text, $name, %want) = @_;
    my @found;
    for my $line (split /\n/, $text) {
        next unless $line =~ /^\Q$name\E\{(.*)\} (\S+)$/;
        my ($labels, $value) = ($1, $2);
        my %l;
        $l{$1} = $2 =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ger
            while $labels =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
        next if grep { ($l{$_} // '') ne $want{$_} } keys %want;
        push @found, $value;
    }
    return @found;
}
sub sample { my @v = samples(@_); is(scalar @v, 1, "one $_[1] sample for @_[2..$#_]") or return; $v[0] }

# --- Access, method, format ---------------------------------------------
is($http->get($gw->url . '/metrics-elsewhere')->{status}, 403,
   'the metrics obey Require like any handler');
is($http->request('POST', $gw->url . '/aoai-metrics')->{status}, 405,
   'only GET');
my $res = scrape();
like($res->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4},
     'text exposition format 0.0.4');
is(sample($res->{content}, 'aoai_member_requests_total', route => 'primary'),
   0, 'a fresh member has 0 requests');
is(sample($res->{content}, 'aoai_member_state', route => 'primary',
          state => 'serving'), 1, 'a fresh member is serving');
is(sample($res->{content}, 'aoai_member_weight', route => 'secondary'), 50,
   'the weight is the loadfactor');
is(sample($res->{content}, 'aoai_member_priority', route => 'secondary'), 1,
   'the priority is the lbset');

# --- Calls, a 429, the window -------------------------------------------
my (%tokens, %served);
for my $n (1 .. 3) {
    my $team = $n == 2 ? 'team_b' : 'team_a';
    my $call = chat($gw, headers => { 'api-key' => $client_key{$team} },
                    content => "metrics call $n " . ('x' x (30 * $n)));
    is($call->{status}, 200, "call $n served");
    is(served_by($call), 'primary', "call $n by the primary");
    $tokens{$team}{$_} += $call->{json}{usage}{"${_}_tokens"} for qw(prompt completion);
    $served{$team}{primary}++;
}
$mock->control('primary', { force_status => 429, force_count => 1,
                            retry_after_form => 'ms',
                            retry_after_ms => 30000 });
my $t429 = time;
my $call = chat($gw, headers => { 'api-key' => $client_key{team_a} });
is(served_by($call), 'secondary', 'the 429 fails over to the secondary');
$tokens{team_a}{$_} += $call->{json}{usage}{"${_}_tokens"} for qw(prompt completion);
$served{team_a}{secondary}++;

# The sampler counts throttled seconds once a second.
sleep 2.5;
$res = scrape();
my $m = $res->{content};
is(sample($m, 'aoai_member_requests_total', route => 'primary'), 4,
   'requests: 3 served and the one that got 429');
is(sample($m, 'aoai_member_served_total', route => 'primary'), 3, 'served');
is(sample($m, 'aoai_member_throttled_responses_total', route => 'primary'), 1,
   'one 429');
is(sample($m, 'aoai_member_failovers_total', route => 'primary'), 1,
   'one failover out of the primary');
is(sample($m, 'aoai_member_served_total', route => 'secondary'), 1,
   'the secondary served the call that failed over');
my $end = sample($m, 'aoai_member_throttle_window_end_timestamp_seconds',
                 route => 'primary');
ok($end > $t429 + 25 && $end < $t429 + 31,
   "the window's end is the 429's time + 30 s (" . ($end - $t429) . ')');
my $left = sample($m, 'aoai_member_throttle_remaining_seconds', route => 'primary');
ok($left > 20 && $left <= 30, "what is left of it ($left s)");
is(sample($m, 'aoai_member_last_retry_after_seconds', route => 'primary'), 30,
   'the last Retry-After, in seconds');
is(sample($m, 'aoai_member_state', route => 'primary', state => 'throttled'), 1,
   'the primary is throttled');
is(sample($m, 'aoai_member_state', route => 'primary', state => 'serving'), 0,
   '... and not serving');
is(sample($m, 'aoai_member_throttle_window_end_timestamp_seconds',
          route => 'secondary'), 0, 'no window on the secondary');
my $throttled_s = sample($m, 'aoai_member_throttled_seconds_total', route => 'primary');
ok($throttled_s >= 1 && $throttled_s <= 4,
   "seconds throttled counted by the sampler ($throttled_s)");
is(sample($m, 'aoai_member_ratelimit_limit', route => 'primary', kind => 'requests'),
   100, "the primary's request limit, from its x-ratelimit-limit-requests");
ok(!samples($m, 'aoai_member_ratelimit_remaining', route => 'primary'),
   'a throttled member has no remaining figures (its window says when)');
my $rem = sample($m, 'aoai_member_ratelimit_remaining', route => 'secondary',
                 kind => 'requests');
ok(defined $rem && $rem >= 0 && $rem <= 1000, "the secondary's remaining requests ($rem)");
is(sample($m, 'aoai_member_realtime_sessions_open', route => 'primary'), 0,
   'no Realtime session open');
for my $label (sort keys %tokens) {
    for my $route (qw(primary secondary)) {
        is(sample($m, 'aoai_key_served_total', route => $route, key => $label) // 0,
           $served{$label}{$route} // 0, "key $label: calls served by the $route")
            if $served{$label}{$route};
    }
    for my $kind (qw(prompt completion)) {
        my $sum = 0;
        $sum += $_ for samples($m, 'aoai_key_tokens_total', key => $label, kind => $kind);
        is($sum, $tokens{$label}{$kind}, "key $label: $kind tokens over its members");
    }
}
my $member_prompt = 0;
$member_prompt += $_ for samples($m, 'aoai_member_tokens_total', kind => 'prompt');
is($member_prompt, $tokens{team_a}{prompt} + $tokens{team_b}{prompt},
   'prompt tokens over the members: what the answers said');
unlike($m, qr/sk-metrics/, 'no caller key on the page');

# --- Realtime sessions, open and in all -------------------------------------
SKIP: {
    skip 'node and t/ws/node_modules are needed (t/run installs them)', 4 unless $realtime;
    (my $ws = $gw->url) =~ s/^http/ws/;
    my $url = "$ws/rt/openai/realtime?api-version=2024-10-01-preview&deployment=gpt-4o-realtime";
    # The session idles 3 s before it asks for its response.
    my $client = open(my $out, '-|', 'node', "$TOP/t/ws/client.mjs", $url,
                      $client_key{team_a}, 3000) or die "node: $!";
    my $open;
    eval { wait_until('the session to open', 10, sub {
        ($open) = samples(scrape()->{content}, 'aoai_member_realtime_sessions_open',
                          route => 'rt');
        ($open // 0) == 1 }) };
    is($open, 1, 'an open Realtime session is counted open on its member');
    my $line = join '', <$out>;
    close $out;
    like($line, qr/"status":101/, 'the session ran') or diag $line;
    my $after = scrape()->{content};
    is(sample($after, 'aoai_member_realtime_sessions_open', route => 'rt'), 0,
       'and no longer once it closed');
    is(sample($after, 'aoai_member_realtime_sessions_total', route => 'rt'), 1,
       'one session in all');
}

# --- promtool -------------------------------------------------------------
my $tmp = tempdir('aoai-prom-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{AOAI_KEEP});
{
    open my $fh, '>', "$tmp/scrape.txt" or die;
    print $fh $m;
    close $fh;
}
my $lint = `promtool check metrics < $tmp/scrape.txt 2>&1`;
is($?, 0, 'promtool check metrics passes') or diag $lint;
is($lint, '', 'and has nothing to say') or diag $lint;

# --- A real Prometheus scrapes it -------------------------------------------
my $prom_port = free_port();
{
    open my $fh, '>', "$tmp/prometheus.yml" or die;
    print $fh <<"EOF";
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: aoai
    metrics_path: /aoai-metrics
    static_configs:
      - targets: ['127.0.0.1:${\ $gw->port }']
EOF
    close $fh;
}
my $prom = fork // die "fork: $!";
if (!$prom) {
    open STDOUT, '>', "$tmp/prometheus.log";
    open STDERR, '>&', \*STDOUT;
    POSIX::setsid();
    exec('prometheus', "--config.file=$tmp/prometheus.yml",
         "--storage.tsdb.path=$tmp/data", "--web.listen-address=127.0.0.1:$prom_port",
         '--log.level=warn') or POSIX::_exit(127);
}
END { if ($prom) { kill 'TERM', $prom; waitpid $prom, 0 } }
my $api = "http://127.0.0.1:$prom_port/api/v1";
sub prom_query {
    my ($query) = @_;
    my $r = $http->get("$api/query?query=" . join '', map {
        /[A-Za-z0-9_]/ ? $_ : sprintf '%%%02X', ord } split //, $query);
    return $r->{success} ? $JSON->decode($r->{content})->{data}{result} : undef;
}
my ($result, $up);
eval {
    wait_until('Prometheus to scrape the gateway', 40, sub {
        $up = prom_query('up{job="aoai"}');
        $result = prom_query('aoai_member_throttled_responses_total{route="primary"}');
        $up && @$up && $up->[0]{value}[1] eq '1' && $result && @$result;
    });
} or diag $@, do { local $/; open my $fh, '<', "$tmp/prometheus.log"; <$fh> };
is($up && $up->[0]{value}[1], '1', 'Prometheus scraped the gateway (up == 1)');
is($result && $result->[0]{value}[1], '1',
   'and holds the primary\'s 429 count, read back through its HTTP API');
is($result && $result->[0]{metric}{balancer}, 'balancer://aoai',
   'labelled with its balancer');
my $states = prom_query('aoai_member_state{state="throttled"} == 1');
is(join(',', map { $_->{metric}{route} } @{ $states || [] }), 'primary',
   'a query for throttled members finds the primary');

kill 'TERM', $prom;
waitpid $prom, 0;
undef $prom;
if ($rt_pid) {
    kill 'TERM', $rt_pid;
    close $rt;
    undef $rt_pid;
}
$gw->stop;
done_testing();
