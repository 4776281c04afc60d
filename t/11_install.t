# Issue 7: the module installs the way Apache estates install modules.
# `make -f apxs.mk install DESTDIR=...` into a throwaway root that holds a
# copy of Debian's /etc/apache2, `a2enmod aoai_balancer` there (it enables
# the proxy modules it depends on), `apachectl configtest`, then a real
# httpd started from the installed files only serves a call through the
# module; `make uninstall` removes exactly what install added.
# Issue 21: scripts/aoai-keyhash is installed too; the configuration goes
# in conf-available/aoai-balancer.conf (a2enconf), where the shipped
# example loads no module twice; and the uninstall order of
# docs/install.md is the one that leaves an httpd that can still reload
# and stop: a2disconf, a2dismod, graceful, then make uninstall.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Find;
use File::Temp qw(tempdir);
use AOAITest;

plan skip_all => 'Debian layout (/etc/apache2/mods-available, a2enmod) needed'
    unless -d '/etc/apache2/mods-available' && -x '/usr/sbin/a2enmod';

my $root = tempdir('aoai-install-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $root;
system('mkdir', '-p', "$root/etc") == 0 or die;
system('cp', '-a', '/etc/apache2', "$root/etc/apache2") == 0 or die;
# what the copy held before: the module and its configuration must not be
# there yet
unlink glob "$root/etc/apache2/mods-enabled/aoai_balancer.*";
unlink glob "$root/etc/apache2/mods-available/aoai_balancer.*";
unlink glob "$root/etc/apache2/conf-enabled/aoai-balancer.*";
unlink glob "$root/etc/apache2/conf-available/aoai-balancer.*";
my $confdir = "$root/etc/apache2";

sub tree {
    my %files;
    find({ no_chdir => 1, wanted => sub { $files{$File::Find::name} = 1 if -f || -l } }, $root);
    return \%files;
}
my $before = tree();

# Debian's tools, run on the copy.
sub ctl {
    my ($command) = @_;
    my $output = `APACHE_CONFDIR=$confdir sh -c '$command' 2>&1`;
    return ($? == 0, $output);
}

my $out = `make -s -C $TOP -f apxs.mk install DESTDIR=$root 2>&1`;
is($?, 0, 'make install DESTDIR=... succeeds') or diag $out;
my $so = "$root/usr/lib/apache2/modules/mod_aoai_balancer.so";
ok(-f $so, 'the module is in the module directory');
ok(-f "$confdir/mods-available/aoai_balancer.load", 'aoai_balancer.load in mods-available');
ok(-f "$confdir/mods-available/aoai_balancer.conf", 'aoai_balancer.conf in mods-available');
like($out, qr/a2enmod aoai_balancer && apachectl configtest && apachectl graceful/,
     'install says how to enable it');

# aoai-keyhash is a command of its own: /usr/local/bin when installed by
# hand, /usr/bin for a package (PREFIX=/usr).
my $keyhash = "$root/usr/local/bin/aoai-keyhash";
ok(-f $keyhash && -x _, 'aoai-keyhash installed, executable, in /usr/local/bin');
my $line = `printf '%s' sk-install-test | $keyhash team-a`;
my $digest = `printf '%s' sk-install-test | openssl dgst -sha256 -r | cut -d' ' -f1`;
chomp $digest;
is($line, "team-a $digest\n", 'the installed aoai-keyhash prints the key file line');
{
    my $pkg = tempdir('aoai-pkg-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $pkg_out = `make -s -C $TOP -f apxs.mk install DESTDIR=$pkg PREFIX=/usr 2>&1`;
    is($?, 0, 'a package build (DESTDIR, PREFIX=/usr) installs') or diag $pkg_out;
    ok(-x "$pkg/usr/bin/aoai-keyhash", '  aoai-keyhash into /usr/bin');
    ok(!-e "$pkg/usr/local", '  and nothing under /usr/local');
    $pkg_out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$pkg PREFIX=/usr 2>&1`;
    is($?, 0, '  and uninstalls') or diag $pkg_out;
    my @files;
    find({ no_chdir => 1, wanted => sub { push @files, $File::Find::name if -f } }, $pkg);
    is_deeply(\@files, [], '  leaving no file behind');
}

$out = `APACHE_CONFDIR=$confdir a2enmod aoai_balancer 2>&1`;
is($?, 0, 'a2enmod aoai_balancer succeeds') or diag $out;
for my $needed (qw(aoai_balancer.load aoai_balancer.conf proxy.load
                   proxy_http.load proxy_balancer.load slotmem_shm.load)) {
    ok(-e "$confdir/mods-enabled/$needed", "a2enmod enabled $needed");
}

# The installed .conf names the system module directory; in this
# throwaway root the module lives under DESTDIR.
{
    my $conf = "$confdir/mods-available/aoai_balancer.conf";
    open my $fh, '<', $conf or die;
    my $text = do { local $/; <$fh> };
    like($text, qr{^LoadModule aoai_balancer_module /usr/lib/apache2/modules/mod_aoai_balancer\.so$}m,
         'the installed .conf loads the module from the system module directory');
    $text =~ s{/usr/lib/apache2/modules/mod_aoai_balancer\.so}{$so};
    open $fh, '>', $conf or die;
    print $fh $text;
}

$out = `APACHE_CONFDIR=$confdir apache2ctl configtest 2>&1`;
is($?, 0, 'apachectl configtest passes on the Debian configuration') or diag $out;
like($out, qr/Syntax OK/, 'Syntax OK');

# The seed example as docs/install.md has it: a2enmod aoai_balancer ssl,
# the file as conf-available/aoai-balancer.conf, a2enconf.  Every module it
# needs is loaded by then, and none twice.
{
    mkdir "$confdir/aoai" or die;
    system("printf '%s' sk-seed | $TOP/scripts/aoai-keyhash team-a > $confdir/aoai/subscription-keys") == 0
        or die;
    system("echo farm1-key > $confdir/aoai/farm1.key") == 0 or die;
    local $ENV{AOAI_FARM0_KEY} = 'farm0-key';
    open my $in, '<', "$TOP/conf/seed-two-farms.conf" or die;
    (my $seed = do { local $/; <$in> }) =~ s{/etc/apache2/aoai/}{$confdir/aoai/}g;
    open my $fh, '>', "$confdir/conf-available/aoai-balancer.conf" or die;
    print $fh $seed;
    close $fh;
    my ($ok, $output) = ctl('a2enmod -q ssl && a2enconf -q aoai-balancer');
    ok($ok, 'a2enmod ssl; a2enconf aoai-balancer with the seed example') or diag $output;
    ($ok, $output) = ctl('apache2ctl configtest');
    ok($ok, '  apachectl configtest passes') or diag $output;
    unlike($output, qr/AH01574|already loaded/, '  and no module is loaded twice');
    ctl('a2disconf -q aoai-balancer');
    unlink "$confdir/conf-available/aoai-balancer.conf";
    system('rm', '-r', "$confdir/aoai") == 0 or die;
}

# The gateway's own configuration, the same way, with the module's own
# LogLevel as docs/observability.md recommends.
my $mock = start_mock(members => [ { name => 'farm1' }, { name => 'farm0' } ]);
my ($u1, $u0) = map { $mock->member_url($_) } qw(farm1 farm0);
{
    open my $fh, '>', "$confdir/conf-available/aoai-balancer.conf" or die;
    print $fh balancer_conf('aoai', members => [ [ $u0, lbset => 1, route => 'farm0' ],
                                                 [ $u1, lbset => 0, route => 'farm1' ] ]),
              <<"EOF";
ProxyPass /openai-load-balancing/openai balancer://aoai/openai
LogLevel aoai_balancer:info
EOF
    close $fh;
}
my ($ok, $output) = ctl('a2enconf -q aoai-balancer');
ok($ok, 'a2enconf aoai-balancer') or diag $output;

# Start httpd from the enabled, installed files and proxy a call.
my $gw = AOAITest::Server->start(
    name => 'installed', ports => [ free_port() ], mpm => 'none',
    modules => "IncludeOptional $confdir/mods-enabled/*.load\n"
             . "IncludeOptional $confdir/mods-enabled/*.conf\n",
    loglevel => 'warn', sanitize => 0,
    conf => "IncludeOptional $confdir/conf-enabled/aoai-balancer*.conf\n");
$mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 5000 });
my $res = chat($gw, path => "/openai-load-balancing$CHAT_PATH");
is($res->{status}, 200, 'the installed module serves a call');
is(served_by($res), 'farm0', 'and fails over from a throttled member');

$out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$root 2>&1`;
isnt($?, 0, 'uninstall refuses while the module is enabled');
like($out, qr/a2dismod aoai_balancer first/, 'and says what to do');

# a2dismod alone leaves a configuration that uses the module: httpd can
# then neither reload it nor even parse it to stop.
($ok, $output) = ctl('a2dismod -q aoai_balancer');
ok($ok, 'a2dismod aoai_balancer') or diag $output;
($ok, $output) = ctl('apache2ctl configtest');
ok(!$ok, 'with its configuration still enabled, apachectl configtest fails');
like($output, qr/unknown lbmethod|Invalid command|Cannot find module/,
     '  on what the module provided') or diag $output;
ok(!$gw->run_ctl('graceful'), '  a graceful restart of the running httpd fails');
ok(!$gw->run_ctl('stop'), '  and so does -k stop');
is(chat($gw, path => "/openai-load-balancing$CHAT_PATH")->{status}, 200,
   '  while the old generation goes on serving');
$out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$root 2>&1`;
isnt($?, 0, 'so uninstall refuses while configtest fails');
like($out, qr/a2disconf aoai-balancer/, '  and says what to disable');
ok(-f $so, '  and leaves the module in place');

# The order that works: a2disconf, a2dismod, graceful, then uninstall.
($ok, $output) = ctl('a2disconf -q aoai-balancer && apache2ctl configtest');
ok($ok, 'after a2disconf aoai-balancer, configtest passes again') or diag $output;
$gw->graceful;
is(chat($gw, path => "/openai-load-balancing$CHAT_PATH")->{status}, 404,
   'graceful: the new generation runs without the module');
$out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$root 2>&1`;
is($?, 0, 'make uninstall succeeds') or diag $out;
ok(!-e $keyhash, '  and removes aoai-keyhash');
my $pid = $gw->{pid};
ok($gw->run_ctl('stop'), 'httpd still stops') or diag $gw->{last_ctl_output};
wait_until('httpd to exit', 15, sub { !kill 0, $pid });
$gw->stop;
$mock->stop;
unlink "$confdir/conf-available/aoai-balancer.conf";    # the admin's own file

# a2enmod also enabled the modules aoai_balancer and ssl depend on;
# a2dismod leaves those, as it does for any module's dependencies.
# Everything else is as before.
my $after = tree();
my @left = grep { !$before->{$_}
                  && !m{/mods-enabled/(proxy|proxy_http|proxy_balancer|slotmem_shm|ssl|socache_shmcb)\.(load|conf)$} }
           sort keys %$after;
is_deeply(\@left, [], 'uninstall removed exactly what install added');
my @lost = grep { !$after->{$_} } sort keys %$before;
is_deeply(\@lost, [], 'and nothing that was there before');

done_testing();
