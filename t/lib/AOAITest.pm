package AOAITest;

# Real httpd instances for the tests: a gateway with mod_aoai_balancer and
# a mock Azure OpenAI farm (t/mock/mod_aoai_mock.c), each started from its
# own generated configuration in a throwaway ServerRoot, on 127.0.0.1, and
# stopped by the PID it wrote.  Nothing of httpd or mod_proxy is mocked.
#
# Why not Apache::Test: it runs one server per suite and refuses to run as
# root, while these tests need several servers at once (a gateway, a mock
# farm, sometimes a second gateway), different MPMs, graceful restarts and
# configurations that must fail `apache2 -t`; and CI runs as root.

use strict;
use warnings;
use Exporter 'import';
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG);
use Fcntl qw(O_RDWR O_RDONLY O_CREAT :flock);
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex);

our @EXPORT = qw(start_mock start_gateway configtest chat_body chat
                 post_json get_json free_port wait_until raw_connect
                 raw_request access_log_records sha256_hex $TOP
                 $CHAT_PATH start_redis start_memcached start_blackhole
                 balancer_conf priority_gateway served_by member_status
                 write_key_file);

our $CHAT_PATH =
    '/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-06-01';
our $TOP = abs_path(dirname(__FILE__) . '/../..');
my $APACHE = $ENV{APACHE2} || '/usr/sbin/apache2';
my $MODULES = '/usr/lib/apache2/modules';
my $JSON = JSON::PP->new->canonical;

sub module_path {
    return $ENV{AOAI_SANITIZE}
        ? "$TOP/build/sanitize/.libs/mod_aoai_balancer.so"
        : "$TOP/.libs/mod_aoai_balancer.so";
}

# Ports.  Test files run in parallel (prove -j) and each picks its ports
# at random, so "bind, close, hope nobody takes it before httpd does" is
# not enough: a port is claimed with a lock on /tmp/aoai-ports/PORT, held
# by the process that claimed it until it exits (the kernel releases the
# lock of a process that died, so a claim is never stale), and only then
# checked free with a bind.  Ports come from below the kernel's ephemeral
# range, where no outgoing connection of the tests can be sitting.  A
# process outside this scheme can still take a port; AOAITest::Server->start
# then moves httpd to fresh ones.
my $PORT_DIR = '/tmp/aoai-ports';
my %claimed;    # port => [ its locked file, the PID that claimed it ]

sub port_range {
    my ($ephemeral) = do {
        open my $fh, '<', '/proc/sys/net/ipv4/ip_local_port_range' or return (20000, 30000);
        split ' ', scalar <$fh>;
    };
    return ($ephemeral && $ephemeral > 25000) ? (20000, $ephemeral - 20000) : (20000, 30000);
}

# Held for the whole claim and the release, so that a file is never
# unlinked between another process opening it and locking it.
sub with_port_dir_lock {
    my ($code) = @_;
    unless (-d $PORT_DIR) {
        mkdir $PORT_DIR;
        chmod 01777, $PORT_DIR;    # shared by whoever runs tests here
    }
    # Read-only is enough for flock, and open to every user.
    sysopen my $lock, "$PORT_DIR/.lock", O_RDONLY | O_CREAT, 0644
        or die "$PORT_DIR/.lock: $!";
    flock $lock, LOCK_EX or die "flock $PORT_DIR/.lock: $!";
    my $result = $code->();
    close $lock;
    return $result;
}

sub claim_port {
    my ($port) = @_;
    return with_port_dir_lock(sub {
        my $file = "$PORT_DIR/$port";
        my $fh;
        sysopen($fh, $file, O_RDWR | O_CREAT, 0666)
            or sysopen($fh, $file, O_RDONLY) or return 0;
        # Held by a live process: someone else's port.
        flock $fh, LOCK_EX | LOCK_NB or return 0;
        truncate $fh, 0 and syswrite $fh, "$$\n";    # for whoever looks
        $claimed{$port} = [ $fh, $$ ];
        return 1;
    });
}

# Only the process that claimed them: a forked child ending normally runs
# END blocks too, and must not take its parent's ports away.
END {
    my @mine = grep { $claimed{$_}[1] == $$ } keys %claimed;
    if (@mine) {
        local ($?, $!, $@);
        eval {
            with_port_dir_lock(sub {
                for my $port (@mine) {
                    unlink "$PORT_DIR/$port";
                    close $claimed{$port}[0];
                }
            });
        };
    }
}

sub free_port {
    my ($low, $count) = port_range();
    for (1 .. 200) {
        my $port = $low + int(rand($count));
        next if $claimed{$port} || !claim_port($port);
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => $port, Listen => 1,
                                      ReuseAddr => 1) or next;   # in use: stays claimed, unused
        close $s;
        return $port;
    }
    die "no free port on 127.0.0.1";
}

sub wait_until {
    my ($what, $timeout, $cond) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    die "timed out after ${timeout}s waiting for $what\n";
}

sub load_modules {
    my (@names) = @_;
    return join '', map { "LoadModule ${_}_module $MODULES/mod_$_.so\n" } @names;
}

sub mpm_block {
    my ($mpm) = @_;
    return '' if $mpm eq 'none';    # the configuration loads its own
    if ($mpm eq 'prefork') {
        return load_modules('mpm_prefork') . <<'EOF';
StartServers 4
MinSpareServers 4
MaxSpareServers 8
ServerLimit 16
MaxRequestWorkers 16
EOF
    }
    if ($mpm eq 'single') {    # one process, so the mock's state is one
        return load_modules('mpm_event') . <<'EOF';
StartServers 1
ServerLimit 1
MinSpareThreads 1
MaxSpareThreads 128
ThreadsPerChild 128
ThreadLimit 128
MaxRequestWorkers 128
EOF
    }
    return load_modules('mpm_event') . <<'EOF';
StartServers 2
ServerLimit 4
MinSpareThreads 8
MaxSpareThreads 64
ThreadsPerChild 16
MaxRequestWorkers 64
EOF
}

sub base_conf {
    my ($dir, %o) = @_;
    my $user = $> == 0 ? "User nobody\nGroup nogroup\n" : '';
    my $listen = join '', map { "Listen 127.0.0.1:$_\n" } @{ $o{ports} };
    return <<"EOF" . mpm_block($o{mpm} || 'event') . $o{modules} . <<"EOF2";
ServerRoot "$dir"
ServerName 127.0.0.1
PidFile "$dir/httpd.pid"
DefaultRuntimeDir "$dir"
Mutex file:$dir default
ErrorLog "$dir/error_log"
LogLevel $o{loglevel}
${user}${listen}KeepAlive On
Timeout 30
EOF
LogFormat "%h %t \\"%r\\" %>s pid=%P backend=%{AOAI_BACKEND}e attempts=%{AOAI_ATTEMPTS}e skipped=%{AOAI_THROTTLED_SKIPPED}e key=%{AOAI_KEY_LABEL}e tokens=%{AOAI_PROMPT_TOKENS}e/%{AOAI_COMPLETION_TOKENS}e/%{AOAI_TOTAL_TOKENS}e" aoai
CustomLog "$dir/access_log" aoai
LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\"" combined
CustomLog "$dir/combined_log" combined
EOF2
}

# ---------------------------------------------------------------------
package AOAITest::Server;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

# Starts httpd; returns once it accepts connections.  When a port of its
# own is taken by then (by a process that does not claim ports as
# free_port does), the server moves to a fresh port and starts again: its
# configuration names its ports as 127.0.0.1:PORT, and port_moved tells
# the Mock which member went where.
sub start {
    my ($class, %o) = @_;
    my $dir = tempdir("aoai-$o{name}-XXXXXX", TMPDIR => 1,
                      CLEANUP => !$ENV{AOAI_KEEP});
    chmod 0755, $dir;
    my $self = bless { %o, ports => [ @{ $o{ports} } ], dir => $dir,
                       conf_file => "$dir/httpd.conf" }, $class;
    for my $attempt (1 .. 5) {
        $self->write_conf($self->{conf});
        last if $self->run_ctl("start");
        my $taken = $self->taken_port;
        die "httpd $o{name} did not start:\n" . $self->{last_ctl_output}
            . $self->error_log unless $taken && $attempt < 5;
        $self->move_port($taken);
    }
    AOAITest::wait_until("$o{name} to listen", 15, sub {
        -s "$dir/httpd.pid" && IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $self->{ports}[0], Timeout => 1)
    });
    open my $fh, '<', "$dir/httpd.pid" or die;
    chomp($self->{pid} = <$fh>);
    return $self;
}

# The port of this server that httpd could not bind because something
# else listens there, if that is why it did not start.
sub taken_port {
    my ($self) = @_;
    my ($port) = ($self->{last_ctl_output} // '')
        =~ /Address already in use: AH00072: make_sock: could not bind to address 127\.0\.0\.1:(\d+)/;
    return $port && grep({ $_ == $port } @{ $self->{ports} }) ? $port : undef;
}

sub move_port {
    my ($self, $old) = @_;
    my $new = AOAITest::free_port();
    $self->{ports} = [ map { $_ == $old ? $new : $_ } @{ $self->{ports} } ];
    $self->{conf} =~ s/\b127\.0\.0\.1:$old(?!\d)/127.0.0.1:$new/g;
    my $moved = $self->{port_moved} ||= {};    # first port => where it is now
    for my $first (keys %$moved) {
        $moved->{$first} = $new if $moved->{$first} == $old;
    }
    $moved->{$old} = $new;
    Test::More::note("$self->{name}: 127.0.0.1:$old was taken, moved to $new")
        if $INC{'Test/More.pm'};
}

sub write_conf {
    my ($self, $body) = @_;
    open my $fh, '>', $self->{conf_file} or die "$self->{conf_file}: $!";
    print $fh AOAITest::base_conf($self->{dir}, %$self), $body;
    close $fh;
}

sub env {
    my ($self) = @_;
    my %env = (%ENV);
    if ($ENV{AOAI_SANITIZE} && $self->{sanitize}) {
        (my $asan = `gcc -print-file-name=libasan.so`) =~ s/\s+\z//;
        # Children run as User nobody: their reports need a directory they
        # can write to, or they are lost.
        my $reports = "$self->{dir}/sanitizer";
        mkdir $reports;
        chmod 01777, $reports;
        $env{LD_PRELOAD} = $asan;
        $env{ASAN_OPTIONS} = "log_path=$reports/report:detect_leaks=1"
            . ":abort_on_error=0:halt_on_error=1";
        $env{LSAN_OPTIONS} = "suppressions=$TOP/t/lsan.supp:print_suppressions=0";
        $env{UBSAN_OPTIONS} = "log_path=$reports/report"
            . ":print_stacktrace=1:halt_on_error=1";
    }
    return %env;
}

# With hosts => [ 'farm1.openai.test', ... ], the server starts in a mount
# namespace of its own where /etc/hosts also maps those names to 127.0.0.1:
# members are reached by name (SNI, Host, certificate names) as in
# production, and the machine's /etc/hosts is never touched.
sub run_ctl {
    my ($self, $signal) = @_;
    local %ENV = $self->env;
    my $command = "$APACHE -d $self->{dir} -f $self->{conf_file} -k $signal";
    if ($signal eq 'start' && $self->{hosts}) {
        open my $system_hosts, '<', '/etc/hosts' or die "/etc/hosts: $!";
        open my $hosts, '>', "$self->{dir}/hosts" or die;
        print {$hosts} <$system_hosts>, map { "127.0.0.1 $_\n" } @{ $self->{hosts} };
        close $hosts;
        chmod 0644, "$self->{dir}/hosts";
        $command = "unshare --mount sh -c 'mount --bind $self->{dir}/hosts "
                 . "/etc/hosts && exec $command'";
    }
    my $out = `$command 2>&1`;
    $self->{last_ctl_output} = $out;
    return $? == 0;
}

sub port { $_[0]{ports}[0] }
sub url  { "http://127.0.0.1:" . $_[0]->port }
sub dir  { $_[0]{dir} }

sub error_log {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/error_log" or return '';
    local $/;
    return <$fh>;
}

sub log_text {
    my ($self, $name) = @_;
    open my $fh, '<', "$self->{dir}/$name" or return '';
    local $/;
    return <$fh>;
}

sub access_log_lines {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/access_log" or return ();
    return <$fh>;
}

sub sanitizer_reports {
    my ($self) = @_;
    my @reports;
    for my $file (glob "$self->{dir}/sanitizer/*") {
        open my $fh, '<', $file or next;
        local $/;
        push @reports, "$file:\n" . <$fh>;
    }
    return @reports;
}

# Graceful restart; returns once the new generation serves.
sub graceful {
    my ($self) = @_;
    my $before = () = $self->error_log =~ /resuming normal operations/g;
    $self->run_ctl('graceful') or die "graceful failed: $self->{last_ctl_output}";
    AOAITest::wait_until('graceful restart', 20, sub {
        my $after = () = $self->error_log =~ /resuming normal operations/g;
        $after > $before;
    });
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    my $pid = delete $self->{pid};
    kill 'TERM', $pid;
    my $deadline = time + 15;
    while (time < $deadline && kill(0, $pid)) {
        sleep 0.05;
    }
    kill 'KILL', $pid if kill 0, $pid;
    if ($ENV{AOAI_SANITIZE} && $self->{sanitize}) {
        require Test::More;
        my @reports = $self->sanitizer_reports;
        Test::More::ok(!@reports, "$self->{name}: no sanitizer report")
            or Test::More::diag(@reports);
    }
}

sub DESTROY { $_[0]->stop }

# ---------------------------------------------------------------------
package AOAITest::Mock;

our @ISA = ('AOAITest::Server');

# The port a member listens on (where it is now, should the mock have
# had to move it at start); without a member, the server's first port.
sub port {
    my ($self, $member) = @_;
    return $self->SUPER::port unless defined $member;
    my $port = $self->{member_port}{$member}
        // die "the mock has no member '$member'\n";
    return $self->{port_moved}{$port} // $port;
}

# The members' names, sorted.
sub members { sort keys %{ $_[0]{member_port} } }

# Where the tests reach a member's /mock/ pages: https for a member behind
# TLS (any certificate accepted: these are the test's own pages).
sub member_url {
    my ($self, $name) = @_;
    return ($self->{member_tls}{$name} ? 'https' : 'http')
        . "://127.0.0.1:" . $self->port($name);
}

# The URL a gateway's BalancerMember uses: the member's own host name,
# which the gateway resolves through start_gateway(hosts => ...).
sub member_https_url {
    my ($self, $name, $host) = @_;
    return "https://$host:" . $self->port($name);
}

sub stats {
    my ($self, $member) = @_;
    return AOAITest::get_json($self->member_url($member) . '/mock/stats');
}

sub control {
    my ($self, $member, $settings) = @_;
    my $res = AOAITest::post_json($self->member_url($member) . '/mock/control',
                                  $settings);
    die "control $member: $res->{status}" unless $res->{status} == 200;
}

sub reset {
    my ($self, @members) = @_;
    @members = $self->members unless @members;
    for my $member (@members) {
        AOAITest::post_json($self->member_url($member) . '/mock/reset', {});
    }
}

# ---------------------------------------------------------------------
package AOAITest;

# start_mock(members => [ { name => 'farm0', quota => '20 10000',
#                           api_key => 'k', stream => '5 20',
#                           tls => [ $cert, $key ],
#                           deployments => [ 'gpt-4o', ... ],
#                           set => { window_mode => 'wall_clock', ... },
#                           compress => 'on' }, ... ])
# deployments, set and compress are AOAIMockDeployments, AOAIMockSet lines
# (see t/mock/mod_aoai_mock.c); compress, on or off, also loads mod_deflate,
# which the member then needs to gzip its answers when told to.
sub start_mock {
    my (%o) = @_;
    my (%member_port, %member_tls, @ports, $vhosts, $deflate);
    for my $member (@{ $o{members} }) {
        my %set = %{ $member->{set} || {} };
        if (defined $member->{compress}) {
            $set{compress} = $member->{compress};
            $deflate = 1;
        }
        my $port = free_port();
        push @ports, $port;
        $member_port{ $member->{name} } = $port;
        $member_tls{ $member->{name} } = 1 if $member->{tls};
        $vhosts .= "<VirtualHost 127.0.0.1:$port>\n"
                 . "    SetHandler aoai-mock\n"
                 . "    AOAIMockMember $member->{name}\n"
                 . ($member->{tls} ? "    SSLEngine on\n"
                                     . "    SSLCertificateFile $member->{tls}[0]\n"
                                     . "    SSLCertificateKeyFile $member->{tls}[1]\n" : '')
                 . ($member->{api_key} ? "    AOAIMockApiKey $member->{api_key}\n" : '')
                 . ($member->{bearer} ? "    AOAIMockBearer $member->{bearer}\n" : '')
                 . ($member->{quota} ? "    AOAIMockQuota $member->{quota}\n" : '')
                 . ($member->{stream} ? "    AOAIMockStream $member->{stream}\n" : '')
                 . ($member->{deployments}
                    ? "    AOAIMockDeployments @{ $member->{deployments} }\n" : '')
                 . join('', map { "    AOAIMockSet $_ $set{$_}\n" } sort keys %set)
                 . "</VirtualHost>\n";
    }
    my $modules = load_modules('authz_core', %member_tls ? qw(socache_shmcb ssl) : (),
                               $deflate ? 'deflate' : ())
        . "LoadModule aoai_mock_module $TOP/t/mock/.libs/mod_aoai_mock.so\n";
    my $mock = AOAITest::Mock->start(
        name => $o{name} || 'mock', ports => \@ports, mpm => 'single',
        modules => $modules, loglevel => 'warn', conf => $vhosts,
        sanitize => 0);
    $mock->{member_port} = \%member_port;
    $mock->{member_tls} = \%member_tls;
    return $mock;
}

# start_gateway(conf => "<Proxy balancer://aoai>...", mpm => 'prefork')
sub start_gateway {
    my (%o) = @_;
    my $port = $o{port} || free_port();
    my $modules = load_modules(qw(authz_core authz_host proxy proxy_http
                                  proxy_balancer slotmem_shm
                                  lbmethod_byrequests headers status))
        . ($o{tls} ? load_modules(qw(socache_shmcb ssl)) : '')
        . ($o{extra_modules} || '')
        . "LoadModule aoai_balancer_module " . module_path() . "\n";
    return AOAITest::Server->start(
        name => $o{name} || 'gateway', ports => [$port],
        mpm => $o{mpm} || 'event', modules => $modules,
        loglevel => $o{loglevel} || 'info', conf => $o{conf}, sanitize => 1,
        hosts => $o{hosts});
}

# One <Proxy balancer://NAME> block of a gateway's configuration:
#   balancer_conf('aoai',
#       members => [ [ $url{farm1}, lbset => 0, route => 'farm1' ],
#                    [ $url{farm0}, lbset => 1, route => 'farm0', timeout => 1 ] ],
#       inside  => [ 'AOAIThrottleDefault 2', 'AOAIThrottleMax 4' ]);
# A member is its URL and then its BalancerMember parameters, written
# key=value in the order given (a bare URL: no parameters).  The block
# balances with lbmethod=aoai unless lbmethod names another (undef: no
# ProxySet line).  inside is what else the block holds, after ProxySet:
# directives one per element, or text put in as it is.  ProxyPass lines
# stay with the test, which knows its paths.
sub balancer_conf {
    my ($name, %o) = @_;
    my $conf = "<Proxy balancer://$name>\n";
    for my $member (@{ $o{members} || die "balancer_conf $name: no members\n" }) {
        my ($url, @params) = ref $member ? @$member : ($member);
        die "balancer_conf $name: $url: parameters come in key => value pairs\n" if @params % 2;
        my @words = ('BalancerMember', $url);
        while (my ($key, $value) = splice @params, 0, 2) {
            push @words, "$key=$value";
        }
        $conf .= "    @words\n";
    }
    my $lbmethod = exists $o{lbmethod} ? $o{lbmethod} : 'aoai';
    $conf .= "    ProxySet lbmethod=$lbmethod\n" if defined $lbmethod;
    my $inside = $o{inside} // '';
    $conf .= ref $inside ? join('', map { "    $_\n" } @$inside) : $inside;
    return $conf . "</Proxy>\n";
}

# A gateway whose one balancer, balancer://aoai at /openai, has the mock's
# members named, with priorities (lbset) 0, 1, ... in that order, and
# directives inside its <Proxy>; the JSON status at /aoai-status.
sub priority_gateway {
    my ($mock, $directives, @members) = @_;
    my $lbset = 0;
    return start_gateway(conf =>
        balancer_conf('aoai', inside => $directives, members => [
            map { [ $mock->member_url($_), lbset => $lbset++, route => $_ ] } @members ])
      . "ProxyPass /openai balancer://aoai/openai\n"
      . "<Location /aoai-status>\n    SetHandler aoai-balancer-status\n</Location>\n");
}

# An AOAISubscriptionKeyFile at $path holding label => key, each line as
# scripts/aoai-keyhash writes it (the way an admin makes one); dies when the
# script writes anything else.  Mode 0644, so that the children can read it.
sub write_key_file {
    my ($path, %keys) = @_;
    open my $fh, '>', $path or die "$path: $!";
    for my $label (sort keys %keys) {
        my $line = `printf '%s' '$keys{$label}' | $TOP/scripts/aoai-keyhash $label`;
        die "aoai-keyhash $label failed" unless $line =~ /^\Q$label\E [0-9a-f]{64}\n\z/;
        print $fh $line;
    }
    close $fh or die "$path: $!";
    chmod 0644, $path;
    return $path;
}

# Who served a call: the member the gateway names in x-aoai-backend, or
# '(none)' when it names none.
sub served_by {
    my ($res) = @_;
    return $res->{headers}{'x-aoai-backend'} // '(none)';
}

# One member of one balancer as the gateway's aoai-balancer-status page
# (at /aoai-status) shows it: member_status($gw, 'aoai', 'farm1') is the
# member with route=farm1 of balancer://aoai; {} when the page has none.
sub member_status {
    my ($gw, $balancer, $route) = @_;
    $balancer = "balancer://$balancer" unless $balancer =~ m{^balancer://};
    my $page = get_json($gw->url . '/aoai-status');
    my ($b) = grep { $_->{name} eq $balancer } @{ $page->{balancers} || [] };
    my ($m) = grep { ($_->{route} // '') eq $route } @{ $b->{members} || [] };
    return $m || {};
}

# Runs `apache2 -t` over a gateway configuration, with the stock modules
# named (a gateway's usual set by default); returns (ok, output).
sub configtest {
    my ($conf, @modules) = @_;
    @modules = qw(authz_core authz_host proxy proxy_http proxy_balancer slotmem_shm
                  lbmethod_byrequests ssl) unless @modules;
    my $dir = tempdir("aoai-configtest-XXXXXX", TMPDIR => 1, CLEANUP => 1);
    my $modules = load_modules(@modules)
        . "LoadModule aoai_balancer_module " . module_path() . "\n";
    open my $fh, '>', "$dir/httpd.conf" or die;
    print $fh base_conf($dir, ports => [free_port()], modules => $modules,
                        loglevel => 'warn'), $conf;
    close $fh;
    my %env = %ENV;
    if ($ENV{AOAI_SANITIZE}) {
        (my $asan = `gcc -print-file-name=libasan.so`) =~ s/\s+\z//;
        $env{LD_PRELOAD} = $asan;
        $env{ASAN_OPTIONS} = 'detect_leaks=1';
        $env{LSAN_OPTIONS} = "suppressions=$TOP/t/lsan.supp:print_suppressions=0";
    }
    local %ENV = %env;
    my $out = `$APACHE -d $dir -f $dir/httpd.conf -t 2>&1`;
    return ($? == 0, $out);
}

sub chat_body {
    my (%o) = @_;
    my $body = {
        messages => [
            { role => 'system', content => 'You are a helpful assistant.' },
            { role => 'user', content => $o{content}
                  || 'Hello! Please tell me the history of United States.' },
        ],
        ($o{stream} ? (stream => JSON::PP::true) : ()),
        ($o{max_tokens} ? (max_tokens => $o{max_tokens}) : ()),
        ($o{include_usage}
            ? (stream_options => { include_usage => JSON::PP::true }) : ()),
    };
    return $JSON->encode($body);
}

# chat($gateway, content => ..., stream => 1, headers => {...}, body => raw)
sub chat {
    my ($server, %o) = @_;
    my $path = $o{path} || $CHAT_PATH;
    my $http = HTTP::Tiny->new(timeout => $o{timeout} || 30, keep_alive => 0);
    my $res = $http->request('POST', $server->url . $path, {
        headers => { 'content-type' => 'application/json',
                     %{ $o{headers} || {} } },
        content => defined $o{body} ? $o{body} : chat_body(%o),
    });
    $res->{json} = eval { $JSON->decode($res->{content}) };
    return $res;
}

# A client connection we hold open, to pin requests to one httpd child.
sub raw_connect {
    my ($server) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1",
                                     PeerPort => $server->port, Timeout => 30)
        or die "connect: $!";
    return $sock;
}

# One HTTP/1.1 request on an open socket; returns
# { status, headers => {lc name => value}, content }.  With chunked => 1
# the body is sent with Transfer-Encoding: chunked in 7000-byte chunks.
sub raw_request {
    my ($sock, %o) = @_;
    my $body = defined $o{body} ? $o{body} : chat_body(%o);
    my $head = "POST " . ($o{path} || $CHAT_PATH) . " HTTP/1.1\r\n"
             . "Host: 127.0.0.1\r\nContent-Type: application/json\r\n";
    $head .= "$_: $o{headers}{$_}\r\n" for keys %{ $o{headers} || {} };
    if ($o{chunked}) {
        $head .= "Transfer-Encoding: chunked\r\n\r\n";
        print $sock $head;
        for (my $i = 0; $i < length $body; $i += 7000) {
            my $piece = substr($body, $i, 7000);
            printf $sock "%x\r\n%s\r\n", length $piece, $piece;
        }
        print $sock "0\r\n\r\n";
    }
    else {
        print $sock $head . "Content-Length: " . length($body) . "\r\n\r\n"
                  . $body;
    }
    return read_response($sock);
}

sub read_response {
    my ($sock) = @_;
    local $/ = "\r\n";
    my $status_line = <$sock>;
    return { status => 599, content => 'connection closed' }
        unless defined $status_line;
    my ($status) = $status_line =~ m{^HTTP/1\.\d (\d+)};
    my %headers;
    while (my $line = <$sock>) {
        last if $line eq "\r\n";
        $line =~ s/\r\n$//;
        my ($name, $value) = split /:\s*/, $line, 2;
        $headers{ lc $name } = $value;
    }
    my $content = '';
    if (defined $headers{'content-length'}) {
        my $left = $headers{'content-length'};
        while ($left > 0) {
            my $n = read($sock, my $buf, $left) or last;
            $content .= $buf;
            $left -= $n;
        }
    }
    elsif (($headers{'transfer-encoding'} || '') =~ /chunked/i) {
        while (defined(my $size_line = <$sock>)) {
            my $size = hex $size_line;
            last unless $size;
            read($sock, my $buf, $size);
            $content .= $buf;
            scalar <$sock>;
        }
        scalar <$sock>;
    }
    my $json = eval { $JSON->decode($content) };
    return { status => $status, headers => \%headers, content => $content,
             json => $json };
}

# The gateway's access log as records: { status, pid, backend, attempts,
# skipped } per line, in order.  httpd writes a line after the response has
# gone out, so the caller says how many it expects and this waits for them.
sub access_log_records {
    my ($server, $expected) = @_;
    my @records;
    my $read = sub {
        @records = ();
        for my $line ($server->access_log_lines) {
            next unless $line =~ /" (\d+) pid=(\d+) backend=(\S+) attempts=(\S+) skipped=(\S+) key=(\S+) tokens=(\S+)\/(\S+)\/(\S+)/;
            push @records, { status => $1, pid => $2, backend => $3,
                             attempts => $4, skipped => $5, key => $6,
                             prompt_tokens => $7, completion_tokens => $8,
                             total_tokens => $9 };
        }
        return @records >= $expected;
    };
    eval { wait_until("$expected access log lines", 10, $read) };
    return @records;
}

sub post_json {
    my ($url, $data) = @_;
    my $res = HTTP::Tiny->new(timeout => 10, keep_alive => 0)->request(
        'POST', $url, { headers => { 'content-type' => 'application/json' },
                        content => $JSON->encode($data) });
    $res->{json} = eval { $JSON->decode($res->{content}) };
    return $res;
}

sub get_json {
    my ($url) = @_;
    my $res = HTTP::Tiny->new(timeout => 10, keep_alive => 0)->get($url);
    die "GET $url: $res->{status} $res->{content}" unless $res->{success};
    return $JSON->decode($res->{content});
}

# ---------------------------------------------------------------------
# Shared caches for AOAISharedCache: a real redis-server, a real memcached
# and a "blackhole" (a port that accepts connections and never answers, a
# cache that is up but hung).  Each listens on 127.0.0.1 only, runs in the
# background from fork/exec, logs into a throwaway directory and is stopped
# by the PID it was started with (also when its object goes away).
package AOAITest::CacheServer;

use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

sub new_server {
    my ($class, $name) = @_;
    my $self = bless {
        name => $name, port => AOAITest::free_port(), owner => $$,
        dir => tempdir("aoai-$name-XXXXXX", TMPDIR => 1,
                       CLEANUP => !$ENV{AOAI_KEEP}),
    }, $class;
    chmod 0755, $self->{dir};    # memcached drops to nobody
    $self->start;
    return $self;
}

sub port { $_[0]{port} }
sub dir  { $_[0]{dir} }
sub log_text {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/log" or return '';
    local $/;
    return <$fh>;
}

# Starts the server again, on the same port; returns once it answers.
sub start {
    my ($self) = @_;
    return $self if $self->{pid};
    my @command = $self->command;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # Never return into the test's code: no END blocks, no DESTROY of
        # the parent's servers in this copy of the process.
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/log";
        open STDERR, '>&', \*STDOUT;
        { no warnings 'exec'; exec { $command[0] } @command; }
        POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    my $deadline = time + 10;
    until ($self->ready) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid || time > $deadline) {
            delete $self->{pid};
            kill 'KILL', $pid;
            waitpid $pid, 0;
            die "$self->{name} did not answer on 127.0.0.1:$self->{port} "
                . "within 10 s:\n" . $self->log_text;
        }
        sleep 0.05;
    }
    return $self;
}

# TERM by PID, bounded wait, then KILL; idempotent.
sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    my $deadline = time + 10;
    while (time < $deadline) {
        return if waitpid($pid, POSIX::WNOHANG()) != 0;
        sleep 0.02;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

# Only the process that started the server stops it (not a forked child).
sub DESTROY {
    my ($self) = @_;
    local ($?, $@, $!);
    $self->stop if ($self->{owner} // 0) == $$;
}

sub connect_to {
    my ($self) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                 PeerPort => $self->{port}, Timeout => 2);
}

# Sends $request on a fresh connection and reads until $until matches what
# came back, for 5 s at most; undef when nothing could be sent.
sub talk {
    my ($self, $request, $until) = @_;
    my $sock = $self->connect_to or return undef;
    syswrite $sock, $request;
    my ($answer, $select, $deadline) = ('', IO::Select->new($sock), time + 5);
    while ($answer !~ $until && time < $deadline) {
        last unless $select->can_read($deadline - time);
        my $n = sysread $sock, my $buf, 65536;
        last unless $n;
        $answer .= $buf;
    }
    close $sock;
    return $answer;
}

# Runs a command and returns its stdout chomped (stderr dropped).
sub capture {
    my (@command) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>', '/dev/null';
        { no warnings 'exec'; exec { $command[0] } @command; }
        POSIX::_exit(127);
    }
    my $out = do { local $/; <$fh> };
    close $fh;
    $out = '' unless defined $out;
    chomp $out;
    return $out;
}

# ---------------------------------------------------------------------
package AOAITest::Redis;
our @ISA = ('AOAITest::CacheServer');

sub command {
    my ($self) = @_;
    return ('redis-server', '--port', $self->{port}, '--bind', '127.0.0.1',
            '--save', '', '--appendonly', 'no', '--daemonize', 'no',
            '--dir', $self->{dir});
}

sub spec { 'redis:127.0.0.1:' . $_[0]{port} }

sub cli {
    my ($self, @args) = @_;
    return AOAITest::CacheServer::capture(
        'redis-cli', '-h', '127.0.0.1', '-p', $self->{port}, @args);
}

sub ready { $_[0]->cli('PING') eq 'PONG' }

# ---------------------------------------------------------------------
package AOAITest::Memcached;
our @ISA = ('AOAITest::CacheServer');

sub command {
    my ($self) = @_;
    return ('memcached', '-l', '127.0.0.1', '-p', $self->{port}, '-U', '0',
            '-m', '16', ($> == 0 ? ('-u', 'nobody') : ()));
}

sub spec { 'memcache:127.0.0.1:' . $_[0]{port} }

sub ready { ($_[0]->talk("version\r\n", qr/\r\n/) // '') =~ /^VERSION / }

# The item's value, or undef when there is none.
sub get {
    my ($self, $key) = @_;
    my $answer = $self->talk("get $key\r\n", qr/^(?:END|ERROR|CLIENT_ERROR|SERVER_ERROR)[^\r]*\r\n\z/m)
        // return undef;
    return undef unless $answer =~ /^VALUE \S+ \d+ (\d+)\r\n/;
    return substr($answer, $+[0], $1);
}

# Stores $value for $ttl seconds (default 60); true when STORED.
sub set {
    my ($self, $key, $value, $ttl) = @_;
    my $answer = $self->talk(sprintf("set %s 0 %d %d\r\n%s\r\n", $key,
                                     $ttl || 60, length $value, $value),
                             qr/\r\n/) // '';
    return $answer =~ /^STORED\r\n/;
}

# Seconds the item has left (-1: it never expires), undef when there is
# none: memcached's meta get with the t flag.
sub ttl {
    my ($self, $key) = @_;
    my $answer = $self->talk("mg $key t\r\n", qr/\r\n/) // return undef;
    return $answer =~ /^HD t(-?\d+)/ ? $1 : undef;
}

# ---------------------------------------------------------------------
package AOAITest::Blackhole;
our @ISA = ('AOAITest::CacheServer');

# The listening socket is made here, before the fork, so that it accepts
# as soon as start returns; the child reads and discards whatever comes
# and never writes.  It gives up by itself after 10 minutes, in case the
# test that started it died without stopping it.
sub start {
    my ($self) = @_;
    return $self if $self->{pid};
    my $listener = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $self->{port}, Listen => 128,
        ReuseAddr => 1) or die "blackhole on 127.0.0.1:$self->{port}: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # Holds nothing of the test's: an orphan would not keep prove's
        # pipe open.
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        my $select = IO::Select->new($listener);
        my $end = time + 600;
        while (time < $end) {
            for my $handle ($select->can_read(1)) {
                if ($handle == $listener) {
                    my $client = $listener->accept;
                    $select->add($client) if $client;
                }
                elsif (!sysread($handle, my $buf, 65536)) {
                    $select->remove($handle);
                    close $handle;
                }
            }
        }
        POSIX::_exit(0);
    }
    close $listener;
    $self->{pid} = $pid;
    return $self;
}

sub spec_redis { 'redis:127.0.0.1:' . $_[0]{port} }
sub spec       { $_[0]->spec_redis }

# ---------------------------------------------------------------------
package AOAITest;

sub start_redis     { AOAITest::Redis->new_server('redis') }
sub start_memcached { AOAITest::Memcached->new_server('memcached') }
sub start_blackhole { AOAITest::Blackhole->new_server('blackhole') }

1;
