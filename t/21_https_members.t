# Issue 11: members are HTTPS, as every real Azure OpenAI resource is.
# A throwaway CA and member certificates are made with openssl for this
# run; the mock members serve TLS on 127.0.0.1 under names that only the
# gateway's own mount namespace resolves (t/lib/AOAITest.pm, hosts =>).
#   - verified TLS (SSLProxyVerify require, SSLProxyCheckPeerName on), each
#     member reached with its own SNI name and Host header;
#   - a member with a wrong-name, expired or unknown-CA certificate is never
#     sent a request: the same call fails over, and mod_proxy keeps the
#     member in error for its retry interval rather than failing every call;
#   - connections to members are kept alive and reused through the module's
#     attempt loop.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use AOAITest;
use AOAITLS;

plan skip_all => 'IO::Socket::SSL is needed to read the mock over TLS (t/run installs it)'
    unless eval { require IO::Socket::SSL; 1 };

my $ca = AOAITLS->new;
my %cert = (
    farm1     => [ $ca->issue('farm1.openai.test') ],
    farm0     => [ $ca->issue('farm0.openai.test') ],
    wrongname => [ $ca->issue('wrongname.openai.test', name => 'other.openai.test') ],
    expired   => [ $ca->issue('expired.openai.test', expired => 1) ],
    rogue     => [ $ca->self_signed('rogue.openai.test') ],
);
my @members = sort keys %cert;
my %host = map { $_ => "$_.openai.test" } @members;
my $mock = start_mock(members => [ map { { name => $_, tls => $cert{$_} } } @members ]);
my %url = map { $_ => $mock->member_https_url($_, $host{$_}) } @members;
my $ca_file = $ca->file;

# A balancer for each member that must not be trusted, farm0 behind it.
my $bad_balancers = join '', map {
    balancer_conf($_, members => [ [ $url{$_}, lbset => 0, route => $_, retry => 30 ],
                                   [ $url{farm0}, lbset => 1, route => 'farm0' ] ])
    . "ProxyPass /$_/openai balancer://$_/openai\n"
} qw(wrongname expired rogue);

my $verified_tls = <<"EOF";
SSLProxyEngine on
SSLProxyVerify require
SSLProxyVerifyDepth 2
SSLProxyCheckPeerName on
SSLProxyCheckPeerExpire on
SSLProxyCACertificateFile $ca_file
EOF
my $gw = start_gateway(tls => 1, hosts => [ values %host ], conf => $verified_tls
  . balancer_conf('aoai', members => [
        [ $url{farm1}, lbset => 0, route => 'farm1' ],
        [ $url{farm0}, lbset => 1, route => 'farm0' ] ],
        inside => [ 'AOAIFirstByteTimeout 800ms' ])
  . $bad_balancers . <<"EOF");
ProxyPass /aoai-status !
ProxyPass /openai balancer://aoai/openai
<Location /aoai-status>
    SetHandler aoai-balancer-status
</Location>
EOF

# --- Verified TLS, each member by its own name --------------------------
my $res = chat($gw);
is($res->{status}, 200, 'a call through an HTTPS member');
is(served_by($res), 'farm1', 'served by the priority-0 member');
my $stats = $mock->stats('farm1');
is($stats->{last_sni}, 'farm1.openai.test', 'farm1 saw its own name in SNI');
is($stats->{last_host}, "farm1.openai.test:" . $mock->port('farm1'),
   'and its own Host header');

# The first-byte timeout holds over TLS too: it counts from the request to
# the first byte of the decrypted answer, not to the handshake.
$mock->control('farm1', { latency_ms => 2500 });
my $t0 = time;
$res = chat($gw, stream => 1);
my $took = time - $t0;
is(served_by($res), 'farm0', 'a silent HTTPS member: the stream fails over at the first-byte timeout');
ok($took >= 0.7 && $took < 2.3, sprintf('  after %.2f s, not the member\'s 2.5 s', $took));
$mock->control('farm1', { latency_ms => 0 });

$mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 3000 });
$res = chat($gw);
is(served_by($res), 'farm0', 'a 429 over TLS fails over to the next HTTPS member');
$stats = $mock->stats('farm0');
is($stats->{last_sni}, 'farm0.openai.test', 'farm0 saw its own name in SNI, not the previous member\'s');
is($stats->{last_host}, "farm0.openai.test:" . $mock->port('farm0'), 'and its own Host');

# --- Members whose certificate must not be trusted ---------------------
for my $bad (qw(wrongname expired rogue)) {
    my $before = $mock->stats('farm0')->{requests};
    my @served;
    for (1 .. 4) {
        my $r = chat($gw, path => "/$bad$AOAITest::CHAT_PATH");
        push @served, "$r->{status} " . served_by($r);
    }
    is_deeply(\@served, [ ('200 farm0') x 4 ], "$bad: every call served by the next member");
    is($mock->stats($bad)->{requests}, 0, "$bad: no request (and no body) ever reached it");
    is($mock->stats('farm0')->{requests} - $before, 4, "$bad: each call reached farm0 once");
}
my $log = $gw->error_log;
for my $bad (qw(wrongname expired rogue)) {
    my @lines = $log =~ /^.*AOAI033: balancer:\/\/$bad: TLS handshake with member $bad \(\Q$host{$bad}\E\) failed.*$/mg;
    is(scalar @lines, 1, "$bad: the module names the member once in 4 calls (in error for retry=30)");
}
like($log, qr/AH02411: SSL Proxy: Peer certificate does not match for hostname wrongname\.openai\.test/,
     'wrongname: mod_ssl gives the reason');
like($log, qr/AH02276: Certificate Verification: Error \(10\): certificate has expired/,
     'expired: mod_ssl gives the reason');
like($log, qr/AH02276: Certificate Verification: Error \(18\): self.signed certificate/,
     'rogue: mod_ssl gives the reason');
my $rogue = member_status($gw, 'rogue', 'rogue');
is($rogue->{state}, 'error', 'the status shows the member in error');
is($rogue->{failovers}, 1, 'one failover counted for it: the later calls skipped it');

# --- Connections are pooled ----------------------------------------------
AOAITest::wait_until('farm1 out of its window', 10,
                     sub { served_by(chat($gw)) eq 'farm1' });
$mock->reset('farm1');
my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 1);
my $ok = 0;
for (1 .. 40) {
    my $r = $http->request('POST', $gw->url . $AOAITest::CHAT_PATH, {
        headers => { 'content-type' => 'application/json' }, content => chat_body() });
    $ok++ if $r->{status} == 200;
}
is($ok, 40, '40 calls over one client connection');
$stats = $mock->stats('farm1');
is($stats->{requests}, 40, 'all served by farm1');
ok($stats->{connections} <= 4,
   "TLS connections to the member are reused ($stats->{connections} handshakes for 40 calls)");

$gw->stop;
$mock->stop;
done_testing();
