#!/usr/bin/perl
# The seed's Step 10, against httpd: two Azure OpenAI resources behind one
# URL, farm1 at priority 0 with a small quota (the seed set 1k TPM to make
# throttling easy to see), farm0 at priority 1.  Every call shows which
# farm served it: farm1 first, farm0 while farm1 is throttled, farm1 again
# when its window ends.  Callers present a subscription key; each farm is
# called with its own key.  Headroom routing is on (the default): farm1's
# x-ratelimit-remaining-requests sends calls to farm0 before farm1 has to
# answer 429, and farm1's learned window brings them back the moment it
# reopens (learning its end costs one 429, failed over unseen);
# DEMO_HEADROOM=off shows the 429-and-failover path at every window.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);

my $calls = $ENV{DEMO_CALLS} || 40;
my $interval = 0.25;

my $secrets = tempdir('aoai-demo-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $secrets;
my $subscription_key = 'demo-subscription-key-0001';
system("printf '%s' '$subscription_key' | $FindBin::Bin/../scripts/aoai-keyhash demo-team > $secrets/keys") == 0
    or die "aoai-keyhash failed\n";
for my $farm (qw(farm0 farm1)) {
    open my $fh, '>', "$secrets/$farm.key" or die;
    print $fh "$farm-azure-key\n";
}

print "starting two mock Azure OpenAI resources on 127.0.0.1:\n",
      "  farm1: priority 0, quota 5 calls per 6 s window\n",
      "  farm0: priority 1, quota 20 calls per 6 s window\n";
my $mock = start_mock(name => 'demo-farms', members => [
    { name => 'farm1', quota => '5 6000', api_key => 'farm1-azure-key' },
    { name => 'farm0', quota => '20 6000', api_key => 'farm0-azure-key' },
]);
my %url = map { $_ => $mock->member_url($_) } qw(farm0 farm1);
my $headroom = ($ENV{DEMO_HEADROOM} // '') eq 'off'
    ? "    AOAIHeadroomFloor requests off\n    AOAIHeadroomFloor tokens off\n" : '';
my $conf = <<"EOF2";
<Proxy balancer://aoai>
    BalancerMember $url{farm0} lbset=1 route=farm0
    BalancerMember $url{farm1} lbset=0 route=farm1
    ProxySet lbmethod=aoai
    AOAIMemberCredential farm0 api-key file:$secrets/farm0.key
    AOAIMemberCredential farm1 api-key file:$secrets/farm1.key
$headroom</Proxy>
<Location /openai-load-balancing>
    AOAISubscriptionKeyFile $secrets/keys
</Location>
ProxyPass /openai-load-balancing/openai balancer://aoai/openai
EOF2
my $gw = start_gateway(name => 'demo-gateway', conf => $conf, loglevel => 'warn');
print "starting httpd with mod_aoai_balancer on ", $gw->url, ":\n",
      join('', map { "  $_\n" } grep { /\S/ } split /\n/, $conf), "\n";

my $path = '/openai-load-balancing/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-06-01';
printf "%-5s %-7s %-6s %-8s %s\n", 'call', 'time', 'status', 'served', 'note';
my (%served, %status);
my $t0 = time;
for my $call (1 .. $calls) {
    my $res = chat($gw, path => $path, headers => { 'api-key' => $subscription_key });
    my $backend = $res->{headers}{'x-aoai-backend'} // '-';
    my $note = $res->{status} == 200 ? ($res->{json}{choices}[0]{message}{content} // '')
             : "Retry-After: " . ($res->{headers}{'retry-after'} // '-');
    printf "%-5d %-7s %-6d %-8s %s\n", $call, sprintf('%.2fs', time - $t0),
        $res->{status}, $backend, $note;
    $served{$backend}++ if $res->{status} == 200;
    $status{ $res->{status} }++;
    sleep $interval;
}

my @log = access_log_records($gw, $calls);
my $failovers = grep { $_->{attempts} > 1 } @log;
my $skipped = grep { $_->{skipped} > 0 } @log;
my $steered = grep { $_->{backend} eq 'farm0' && $_->{attempts} == 1 && !$_->{skipped} } @log;
print "\nsummary:\n";
printf "  calls served: farm1 %d, farm0 %d; the client saw %d x 200, %d x 429, %d x 5xx\n",
    $served{farm1} || 0, $served{farm0} || 0, $status{200} || 0, $status{429} || 0,
    scalar(grep { $_ >= 500 } map { ($_) x $status{$_} } keys %status);
for my $farm (qw(farm1 farm0)) {
    my $s = $mock->stats($farm);
    printf "  %s received %d calls: %d answered 200, %d answered 429 (each 429 opened a throttle window)\n",
        $farm, $s->{requests}, $s->{status}{200} || 0, $s->{status}{429} || 0;
}
printf "  %d calls failed over to farm0 in the same request after farm1's 429; "
     . "%d went straight to farm0 because farm1 was inside its window\n", $failovers, $skipped;
printf "  %d went to farm0 because farm1 had said it had no requests left (headroom routing, no 429 needed)\n",
    $steered;
print "  every farm was called with its own key; the demo key never left the gateway\n"
    if $mock->stats('farm1')->{last_api_key} eq 'valid';

$gw->stop;
$mock->stop;
