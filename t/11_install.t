# Issue 7: the module installs the way Apache estates install modules.
# `make -f apxs.mk install DESTDIR=...` into a throwaway root that holds a
# copy of Debian's /etc/apache2, `a2enmod aoai_balancer` there (it enables
# the proxy modules it depends on), `apachectl configtest`, then a real
# httpd started from the installed files only serves a call through the
# module; `make uninstall` removes exactly what install added.
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
# what the copy held before: the module must not be there yet
unlink glob "$root/etc/apache2/mods-enabled/aoai_balancer.*";
unlink glob "$root/etc/apache2/mods-available/aoai_balancer.*";
my $confdir = "$root/etc/apache2";

sub tree {
    my %files;
    find({ no_chdir => 1, wanted => sub { $files{$File::Find::name} = 1 if -f || -l } }, $root);
    return \%files;
}
my $before = tree();

my $out = `make -s -C $TOP -f apxs.mk install DESTDIR=$root 2>&1`;
is($?, 0, 'make install DESTDIR=... succeeds') or diag $out;
my $so = "$root/usr/lib/apache2/modules/mod_aoai_balancer.so";
ok(-f $so, 'the module is in the module directory');
ok(-f "$confdir/mods-available/aoai_balancer.load", 'aoai_balancer.load in mods-available');
ok(-f "$confdir/mods-available/aoai_balancer.conf", 'aoai_balancer.conf in mods-available');
like($out, qr/a2enmod aoai_balancer && apachectl configtest && apachectl graceful/,
     'install says how to enable it');

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

# Start httpd from the enabled, installed files and proxy a call.
my $mock = start_mock(members => [ { name => 'farm1' }, { name => 'farm0' } ]);
my ($u1, $u0) = map { $mock->member_url($_) } qw(farm1 farm0);
my $gw = AOAITest::Server->start(
    name => 'installed', ports => [ free_port() ], mpm => 'none',
    modules => "IncludeOptional $confdir/mods-enabled/*.load\n"
             . "IncludeOptional $confdir/mods-enabled/*.conf\n",
    loglevel => 'warn', sanitize => 0, conf => <<"EOF");
<Proxy balancer://aoai>
    BalancerMember $u0 lbset=1 route=farm0
    BalancerMember $u1 lbset=0 route=farm1
    ProxySet lbmethod=aoai
</Proxy>
ProxyPass /openai-load-balancing/openai balancer://aoai/openai
EOF
$mock->control('farm1', { force_status => 429, force_count => 1, retry_after_ms => 5000 });
my $res = chat($gw, path => "/openai-load-balancing$CHAT_PATH");
is($res->{status}, 200, 'the installed module serves a call');
is($res->{headers}{'x-aoai-backend'}, 'farm0', 'and fails over from a throttled member');
$gw->stop;
$mock->stop;

$out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$root 2>&1`;
isnt($?, 0, 'uninstall refuses while the module is enabled');
like($out, qr/a2dismod aoai_balancer first/, 'and says what to do');
`APACHE_CONFDIR=$confdir a2dismod -q aoai_balancer 2>&1`;
$out = `make -s -C $TOP -f apxs.mk uninstall DESTDIR=$root 2>&1`;
is($?, 0, 'make uninstall succeeds after a2dismod') or diag $out;

# a2enmod also enabled the proxy modules; a2dismod leaves those, as it
# does for any module's dependencies.  Everything else is as before.
my $after = tree();
my @left = grep { !$before->{$_} && !m{/mods-enabled/(proxy|proxy_http|proxy_balancer|slotmem_shm)\.(load|conf)$} }
           sort keys %$after;
is_deeply(\@left, [], 'uninstall removed exactly what install added');
my @lost = grep { !$after->{$_} } sort keys %$before;
is_deeply(\@lost, [], 'and nothing that was there before');

done_testing();
