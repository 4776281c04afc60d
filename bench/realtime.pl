#!/usr/bin/perl
# What a Realtime session's handshake costs through the gateway (issue 22),
# side by side in one run, to the same WebSocket members (t/ws/member.mjs):
#   direct    the client to the member, no gateway;
#   stock     mod_proxy_balancer's byrequests, members with upgrade=websocket;
#   aoai      lbmethod=aoai, nothing added to the configuration;
#   failover  lbmethod=aoai, the priority member answering every handshake
#             503: each session is failed over to the next member.
# Wall clock: the median and 90th percentile of the time from opening the
# socket to the 101, sessions one after another, the kinds interleaved in
# rounds; instructions: per handshake, callgrind over one httpd -X (the
# difference of two runs, so start-up cancels out).
#   perl bench/realtime.pl [sessions per kind and round, default 200] [rounds, default 3]
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use File::Temp qw(tempdir);
use JSON::PP;
use IO::Socket::INET;

my $sessions = shift || 200;
my $rounds = shift || 3;
my $key = 'bench-member-key';
my %port = map { $_ => free_port() } qw(farm1 farm0 bad);
my $members_pid = open(my $members, '-|', 'node', "$TOP/t/ws/member.mjs",
                       map { "$_:$port{$_}:$key" } sort keys %port) or die "node: $!";
die "the members did not start\n" unless (<$members> // '') =~ /ready/;
END { kill 'TERM', $members_pid if $members_pid }
AOAITest::post_json("http://127.0.0.1:$port{bad}/mock/control", { handshake_status => 503, count => -1 });

my $dir = tempdir('aoai-realtime-bench-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0777, $dir;
my $gw_port = free_port();
my $conf = AOAITest::base_conf($dir, ports => [$gw_port], mpm => 'prefork', loglevel => 'warn',
    modules => AOAITest::load_modules(qw(authz_core proxy proxy_http proxy_balancer slotmem_shm
                                         lbmethod_byrequests))
             . "LoadModule aoai_balancer_module $TOP/.libs/mod_aoai_balancer.so\n")
    . <<"CONF";
<Proxy balancer://stock>
    BalancerMember http://127.0.0.1:$port{farm1} lbset=0 upgrade=websocket
    BalancerMember http://127.0.0.1:$port{farm0} lbset=1 upgrade=websocket
    ProxySet lbmethod=byrequests
</Proxy>
<Proxy balancer://aoai>
    BalancerMember http://127.0.0.1:$port{farm1} lbset=0 route=farm1
    BalancerMember http://127.0.0.1:$port{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
</Proxy>
<Proxy balancer://failover>
    BalancerMember http://127.0.0.1:$port{bad} lbset=0 route=bad
    BalancerMember http://127.0.0.1:$port{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
</Proxy>
ProxyPass /stock/openai balancer://stock/openai
ProxyPass /aoai/openai balancer://aoai/openai
ProxyPass /failover/openai balancer://failover/openai
CONF
open my $fh, '>', "$dir/httpd.conf" or die;
print $fh $conf;
close $fh;

my $path = 'openai/realtime?api-version=2024-10-01-preview&deployment=gpt-4o-realtime';
my %url = (direct => "ws://127.0.0.1:$port{farm1}/$path",
           map { $_ => "ws://127.0.0.1:$gw_port/$_/$path" } qw(stock aoai failover));
my @kinds = qw(direct stock aoai failover);

sub run_sessions {
    my ($kind, $count) = @_;
    my $out = `node $FindBin::Bin/realtime-client.mjs '$url{$kind}' $key $count 2>&1`;
    my $result = eval { decode_json((split /\n/, $out)[-1]) } or die "$kind: $out\n";
    return $result;
}

sub start_httpd {
    my (@under) = @_;
    my $pid = fork // die;
    if (!$pid) {
        open STDERR, '>', '/dev/null';
        exec(($> == 0 ? ('runuser', '-u', 'nobody', '--') : ()), @under,
             '/usr/sbin/apache2', @under ? ('-X') : (), '-d', $dir, '-f', "$dir/httpd.conf");
    }
    wait_until('httpd', 120, sub {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw_port, Timeout => 1) });
    return $pid;
}

sub stop_httpd {
    my ($pid) = @_;
    wait_until('the pid file', 10, sub { -s "$dir/httpd.pid" });
    open my $pidfile, '<', "$dir/httpd.pid" or die "no pid file: $!";
    chomp(my $httpd = <$pidfile>);
    close $pidfile;
    kill 'TERM', $httpd;
    waitpid $pid, 0 if @_ > 1;
    wait_until('httpd gone', 30, sub { !kill 0, $httpd });
    unlink "$dir/httpd.pid";
}

# Wall clock, the kinds interleaved round by round.
my $httpd = start_httpd();
my %wall;
for my $round (1 .. $rounds) {
    for my $kind (@kinds) {
        my $r = run_sessions($kind, $sessions);
        die "$kind: $r->{sessions} of $sessions sessions\n" unless $r->{sessions} == $sessions;
        die "failover: sessions not all on farm0\n"
            if $kind eq 'failover' && ($r->{backends}{farm0} // 0) != $sessions;
        push @{ $wall{$kind} }, $r;
    }
}
stop_httpd($httpd);

# Instructions per handshake: callgrind over httpd -X.
sub instructions {
    my ($kind, $count) = @_;
    my $out = "$dir/callgrind.$kind.$count";
    my $pid = start_httpd('valgrind', '--tool=callgrind', '--vgdb=no', "--callgrind-out-file=$out");
    run_sessions($kind, $count);
    stop_httpd($pid, 'wait');
    my ($total) = `callgrind_annotate $out 2>/dev/null` =~ /^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS/m;
    die "no callgrind total for $kind x $count\n" unless $total;
    $total =~ tr/,//d;
    return $total;
}
my %ir;
for my $kind (qw(stock aoai failover)) {
    $ir{$kind} = (instructions($kind, 60) - instructions($kind, 10)) / 50;
}
kill 'TERM', $members_pid;
waitpid $members_pid, 0;
$members_pid = 0;

sub median { my @v = sort { $a <=> $b } @_; $v[$#v / 2] }
my %med = map { my $k = $_; $k => median(map { $_->{median_ms} } @{ $wall{$k} }) } @kinds;
my %p90 = map { my $k = $_; $k => median(map { $_->{p90_ms} } @{ $wall{$k} }) } @kinds;
printf "%d sessions a kind in each of %d rounds; median of the rounds' figures\n\n", $sessions, $rounds;
print "| handshake | median ms | p90 ms | median vs stock | instructions per handshake (httpd) | vs stock |\n";
print "| --- | --- | --- | --- | --- | --- |\n";
for my $kind (@kinds) {
    printf "| %s | %.3f | %.3f | %s | %s | %s |\n", $kind, $med{$kind}, $p90{$kind},
        $kind eq 'direct' ? '-' : sprintf('%.2fx', $med{$kind} / $med{stock}),
        $ir{$kind} ? sprintf('%.0f', $ir{$kind}) : '-',
        $ir{$kind} ? sprintf('%.2fx', $ir{$kind} / $ir{stock}) : '-';
}
printf "\nThe failover's cost: %+.3f ms and %+.0f instructions a session over aoai's first-try handshake.\n",
    $med{failover} - $med{aoai}, $ir{failover} - $ir{aoai};
