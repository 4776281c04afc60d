#!/usr/bin/perl
# What objects pinned to their member cost (issue 18): instructions per
# call (callgrind counts, so the figure repeats run to run) through one
# httpd -X, for
#   - a GET of a stored response the gateway knows (the affinity lookup),
#     against the same GET with AOAIObjectAffinity Off;
#   - a v1 chat call that names no object, on and off (what every call
#     pays for the feature: a path scan);
# both sides under a <Location> of their own, so that the per-directory
# merge costs them the same;
# and the shared memory a recorded id takes.
#   perl bench/affinity.pl [calls measured, default 100]
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use AOAITest;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use IO::Socket::INET;

my $calls = shift || 100;
my $mock = start_mock(name => 'affinity-mock', members => [ { name => 'farm1' }, { name => 'farm0' } ]);
my %url = map { $_ => $mock->member_url($_) } qw(farm1 farm0);

my $dir = tempdir('aoai-affinity-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0777, $dir;
my $port = free_port();
my $conf = AOAITest::base_conf($dir, ports => [$port], mpm => 'prefork', loglevel => 'warn',
    modules => AOAITest::load_modules(qw(authz_core proxy proxy_http proxy_balancer slotmem_shm))
             . "LoadModule aoai_balancer_module $TOP/.libs/mod_aoai_balancer.so\n")
    . <<"EOF";
<Proxy balancer://aoai>
    BalancerMember $url{farm1} lbset=0 route=farm1
    BalancerMember $url{farm0} lbset=1 route=farm0
    ProxySet lbmethod=aoai
</Proxy>
<Location /on>
    AOAIObjectAffinity On
</Location>
<Location /off>
    AOAIObjectAffinity Off
</Location>
ProxyPass /on/openai balancer://aoai/openai
ProxyPass /off/openai balancer://aoai/openai
EOF
open my $fh, '>', "$dir/httpd.conf" or die;
print $fh $conf;
close $fh;

my $http = HTTP::Tiny->new(timeout => 60, keep_alive => 1);
my $base = "http://127.0.0.1:$port";
my $chat = '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}';
my %request = (
    get  => sub { $http->get("$base/$_[0]/openai/v1/responses/$_[1]") },
    chat => sub { $http->post("$base/$_[0]/openai/v1/chat/completions",
                              { headers => { 'content-type' => 'application/json' }, content => $chat }) },
);

# One httpd -X under valgrind for a run of $count calls of a kind.
sub total_instructions {
    my ($kind, $where, $count) = @_;
    my $out = "$dir/callgrind.$kind.$where.$count";
    my $pid = fork // die;
    if (!$pid) {
        open STDERR, '>', '/dev/null';
        exec(($> == 0 ? ('runuser', '-u', 'nobody', '--') : ()),
             'valgrind', '--tool=callgrind', '--vgdb=no', "--callgrind-out-file=$out",
             '/usr/sbin/apache2', '-X', '-d', $dir, '-f', "$dir/httpd.conf");
    }
    wait_until('httpd under valgrind', 120, sub {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1) });
    # A response made on farm1 through this very process: recorded.
    my $made = $http->post("$base/on/openai/v1/responses",
        { headers => { 'content-type' => 'application/json' }, content => '{"model":"gpt-4o","input":"hi"}' });
    my $id = decode_json($made->{content})->{id} or die "no response made: $made->{content}";
    for (1 .. $count) {
        my $res = $request{$kind}->($where, $id);
        die "$kind $where: $res->{status} $res->{content}" unless $res->{success};
    }
    open my $pidfile, '<', "$dir/httpd.pid" or die "no pid file: $!";
    chomp(my $httpd = <$pidfile>);
    kill 'TERM', $httpd;
    waitpid $pid, 0;
    my ($total) = `callgrind_annotate $out 2>/dev/null` =~ /^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS/m;
    die "no callgrind total for $kind $where x $count\n" unless $total;
    $total =~ tr/,//d;
    return $total;
}

my %ir;
for my $kind (qw(get chat)) {
    for my $where (qw(on off)) {
        $ir{"$kind $where"} = (total_instructions($kind, $where, $calls + 10)
                               - total_instructions($kind, $where, 10)) / $calls;
    }
}
$mock->stop;

printf "| call | AOAIObjectAffinity On | Off | difference |\n| --- | --- | --- | --- |\n";
for my $kind (qw(get chat)) {
    printf "| %s | %.0f | %.0f | %+.0f |\n",
        $kind eq 'get' ? 'GET /openai/v1/responses/{id} (recorded)' : 'POST /openai/v1/chat/completions',
        $ir{"$kind on"}, $ir{"$kind off"}, $ir{"$kind on"} - $ir{"$kind off"};
}
print "\nShared memory per recorded id: 24 bytes (key, member, lapse time), "
    . "in a table of AOAIObjectTableSize entries (65536: 1.5 MiB).\n";
