# A wrong directive fails `apache2 -t`, naming the directive and why.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use AOAITest;
use File::Temp ();

my $proxy = sub {
    my ($inside) = @_;
    return balancer_conf('aoai', members => [ [ 'http://127.0.0.1:9', lbset => 0 ] ],
                         inside => "$inside\n");
};

my ($ok, $out) = configtest($proxy->("    AOAIThrottleDefault 5\n    AOAIThrottleMax 30\n"
                                     . "    AOAIFailoverOn 401 429 503 connection-error\n"
                                     . "    AOAIMaxBody 16M\n    AOAIBackendHeader x-served-by")
                            . "AOAIThrottleTableSize 1024\n");
ok($ok, 'a correct configuration passes apache2 -t') or diag $out;

my @bad = (
    [ 'AOAIThrottleDefault soon', qr/AOAIThrottleDefault: 'soon' is not a positive duration/ ],
    [ 'AOAIThrottleDefault 0', qr/AOAIThrottleDefault: '0' is not a positive duration/ ],
    [ "AOAIThrottleDefault 30\n    AOAIThrottleMax 10",
      qr/AOAIThrottleMax 10 is shorter than AOAIThrottleDefault/ ],
    [ "AOAIThrottleMax 10\n    AOAIThrottleDefault 30",
      qr/AOAIThrottleDefault 30 is longer than AOAIThrottleMax/ ],
    [ 'AOAIFailoverOn 429 200', qr/AOAIFailoverOn: status 200 is outside 400-599/ ],
    [ 'AOAIFailoverOn 429 sometimes', qr/AOAIFailoverOn: 'sometimes' is neither an HTTP status/ ],
    [ 'AOAIMaxBody 0', qr/AOAIMaxBody: 0 is out of range/ ],
    [ 'AOAIMaxBody 12Q', qr/AOAIMaxBody: '12Q' is not a size/ ],
    [ 'AOAIMaxBody 4G', qr/AOAIMaxBody: 4G is out of range/ ],
    [ 'AOAIBackendHeader x-bad:header', qr/AOAIBackendHeader: 'x-bad:header' is not a valid header name/ ],
    [ 'AOAIThrottleTableSize 1024', qr/AOAIThrottleTableSize .*not allowed/ ],
);
for my $case (@bad) {
    my ($directive, $expect) = @$case;
    my ($passed, $output) = configtest($proxy->("    $directive"));
    (my $name = $directive) =~ s/\n\s*/; /g;
    ok(!$passed, "apache2 -t fails for: $name");
    like($output, $expect, "  and says why") or diag $output;
}

($ok, $out) = configtest("AOAIThrottleTableSize 3\n" . $proxy->(''));
ok(!$ok, 'apache2 -t fails for a table of 3 slots');
like($out, qr/AOAIThrottleTableSize: '3' is not a number of slots from 16 to 65536/, '  and says why');

# lbmethod=aoai without the modules a balancer needs
($ok, $out) = configtest($proxy->(''), qw(authz_core proxy proxy_http));
ok(!$ok, 'apache2 -t fails for lbmethod=aoai without mod_proxy_balancer');
like($out, qr/AOAI003: balancer:\/\/aoai uses lbmethod=aoai, which needs LoadModule proxy_balancer_module/,
     '  and names the missing module');
($ok, $out) = configtest($proxy->(''), qw(authz_core proxy proxy_balancer slotmem_shm));
ok(!$ok, 'apache2 -t fails for lbmethod=aoai without mod_proxy_http');
like($out, qr/needs LoadModule proxy_http_module/, '  and names the missing module');

# The shipped examples must stay valid, with the secrets they name, and fit
# Debian's layout: they are read after a2enmod has loaded every module
# (configtest loads them here), so they carry no LoadModule of their own,
# which would only earn an AH01574 warning.
my $secrets = File::Temp::tempdir('aoai-conf-XXXXXX', TMPDIR => 1, CLEANUP => 1);
system("printf '%s' sk-example | $TOP/scripts/aoai-keyhash team-a > $secrets/subscription-keys") == 0 or die;
system("echo farm1-key > $secrets/farm1.key") == 0 or die;
local $ENV{AOAI_FARM0_KEY} = 'farm0-key';
my %example;
for my $name (qw(seed-two-farms.conf multi-region.conf status-localhost.conf)) {
    open my $fh, '<', "$TOP/conf/$name" or die $!;
    my $conf = do { local $/; <$fh> };
    $conf =~ s{/etc/apache2/aoai/}{$secrets/}g;
    $example{$name} = $conf;
    unlike($conf, qr/^\s*LoadModule/m, "conf/$name leaves LoadModule to a2enmod");
    ($ok, $out) = configtest("Define APACHE_LOG_DIR /tmp\n$conf");
    ok($ok, "conf/$name passes apache2 -t") or diag $out;
    unlike($out, qr/AH01574|already loaded/, '  without a module loaded twice');

    # A LogFormat defined and never used is a log line that lacks what
    # the admin thought it had.
    my %defined = map { $_ => 1 } $conf =~ /^\s*LogFormat\s+"(?:[^"\\]|\\.)*"\s+(\S+)/mg;
    my %used = map { $_ => 1 } $conf =~ /^\s*CustomLog\s+\S+\s+(\S+)/mg;
    is_deeply([ sort keys %used ], [ sort grep { $used{$_} } keys %defined ],
              "conf/$name: each CustomLog uses a LogFormat of the file");
    is_deeply([ sort keys %defined ], [ sort keys %used ],
              "conf/$name: and each LogFormat is used");
}
like($example{'seed-two-farms.conf'}, qr/^\s*LogFormat\s.*key=%\{AOAI_KEY_LABEL\}e/m,
     'the seed logs the subscription key label');

# The status pages can go into a virtual host (ExtendedStatus could not).
($ok, $out) = configtest("<VirtualHost 127.0.0.1:8080>\n$example{'status-localhost.conf'}</VirtualHost>\n",
                         qw(authz_core authz_host proxy proxy_http proxy_balancer slotmem_shm status));
ok($ok, 'conf/status-localhost.conf passes apache2 -t inside a <VirtualHost>') or diag $out;

done_testing();
