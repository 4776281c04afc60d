# Build mod_aoai_balancer with httpd's own apxs.
#
#   make -f apxs.mk              the module: .libs/mod_aoai_balancer.so
#   make -f apxs.mk sanitize     ASan+UBSan build: build/sanitize/.libs/mod_aoai_balancer.so
#   make -f apxs.mk mock         the mock Azure OpenAI member used by t/ and the demo
#   make -f apxs.mk test         build all three, then run t/ with prove
#   make -f apxs.mk install      into the system httpd (DESTDIR respected);
#                                on Debian also mods-available/aoai_balancer.{load,conf};
#                                scripts/aoai-keyhash into $(BINDIR)
#   make -f apxs.mk uninstall    removes exactly what install added
#
# The module goes where httpd's apxs says (LIBEXECDIR), since httpd loads it
# from there.  aoai-keyhash is a command of its own: installed by hand it goes
# under /usr/local, which Debian leaves to the administrator; a package build
# sets PREFIX=/usr (make -f apxs.mk install DESTDIR=debian/tmp PREFIX=/usr).

APXS     ?= apxs
APACHECTL ?= apachectl
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
WARNINGS  = -Wall -Wextra -Werror
# From the bottom layer up (mod_aoai_balancer.c names the layers).
APR_ONLY  = modules/aoai_window.c modules/aoai_ratelimit.c modules/aoai_json.c \
            modules/aoai_usage.c modules/aoai_inflate.c modules/aoai_keyfile.c
SOURCES   = $(APR_ONLY) \
            modules/aoai_config.c modules/aoai_balancers.c modules/aoai_table.c \
            modules/aoai_request.c modules/aoai_affinity.c \
            modules/aoai_learn.c modules/aoai_headroom.c modules/aoai_key_quota.c \
            modules/aoai_deployments.c modules/aoai_front_door.c \
            modules/aoai_shared_cache.c modules/aoai_throttle.c \
            modules/aoai_objects.c modules/aoai_operations.c \
            modules/aoai_verdict.c \
            modules/aoai_lbmethod.c modules/aoai_kept_body.c \
            modules/aoai_realtime.c \
            modules/aoai_first_byte.c modules/aoai_metering.c \
            modules/aoai_answers.c \
            modules/aoai_failover.c \
            modules/aoai_history.c modules/aoai_status.c modules/aoai_metrics.c \
            modules/aoai_page.c \
            mod_aoai_balancer.c
HEADERS   = $(wildcard modules/*.h)
MOCK_SRC  = t/mock/mod_aoai_mock.c t/mock/aoai_mock_settings.c \
            t/mock/aoai_mock_quota.c t/mock/aoai_mock_store.c \
            t/mock/aoai_mock_objects.c t/mock/aoai_mock_assistants.c \
            t/mock/aoai_mock_responses.c
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1

LIBEXECDIR := $(shell $(APXS) -q LIBEXECDIR)
SYSCONFDIR := $(shell $(APXS) -q SYSCONFDIR)
# Debian's layout: a2enmod reads mods-available/
MODS_AVAILABLE = $(if $(wildcard $(SYSCONFDIR)/mods-available),$(SYSCONFDIR)/mods-available)

APXS_C    = $(APXS) -c $(foreach f,$(WARNINGS),-Wc,$(f)) -I. -Imodules

.PHONY: all sanitize mock test test-sanitize install uninstall clean

all: .libs/mod_aoai_balancer.so

.libs/mod_aoai_balancer.so: $(SOURCES) $(HEADERS) apxs.mk
	$(APXS_C) -o mod_aoai_balancer.la $(SOURCES) -ljansson -lcrypto -lz

# apxs puts objects beside their sources, so the sanitizer build gets a
# tree of its own instead of sharing (and clobbering) the release objects.
sanitize: build/sanitize/.libs/mod_aoai_balancer.so

build/sanitize/.libs/mod_aoai_balancer.so: $(SOURCES) $(HEADERS) apxs.mk
	mkdir -p build/sanitize/modules
	cp mod_aoai_balancer.c build/sanitize/
	cp modules/*.c modules/*.h build/sanitize/modules/
	cd build/sanitize && $(APXS) -c $(foreach f,$(WARNINGS) $(SAN_FLAGS),-Wc,$(f)) \
	    -Wl,-fsanitize=address,undefined -I. -Imodules \
	    -o mod_aoai_balancer.la $(SOURCES) -ljansson -lcrypto -lz

mock: t/mock/.libs/mod_aoai_mock.so

t/mock/.libs/mod_aoai_mock.so: $(MOCK_SRC) t/mock/aoai_mock.h apxs.mk
	$(APXS) -c $(foreach f,$(WARNINGS),-Wc,$(f)) -o t/mock/mod_aoai_mock.la \
	    $(MOCK_SRC) -ljansson -lcrypto

test: all mock
	prove -v t/

test-sanitize: sanitize mock
	AOAI_SANITIZE=1 prove -v t/

install: all
	mkdir -p "$(DESTDIR)$(LIBEXECDIR)"
	$(APXS) -i -S LIBEXECDIR="$(DESTDIR)$(LIBEXECDIR)" -n aoai_balancer mod_aoai_balancer.la
	install -D -m 755 scripts/aoai-keyhash "$(DESTDIR)$(BINDIR)/aoai-keyhash"
ifneq ($(MODS_AVAILABLE),)
	install -d "$(DESTDIR)$(MODS_AVAILABLE)"
	install -m 644 conf/aoai_balancer.load "$(DESTDIR)$(MODS_AVAILABLE)/aoai_balancer.load"
	sed 's#/usr/lib/apache2/modules#$(LIBEXECDIR)#' conf/aoai_balancer.conf \
	    > "$(DESTDIR)$(MODS_AVAILABLE)/aoai_balancer.conf"
	chmod 644 "$(DESTDIR)$(MODS_AVAILABLE)/aoai_balancer.conf"
	@echo "installed; enable with: a2enmod aoai_balancer && apachectl configtest && apachectl graceful"
endif

# Order matters on a running server (docs/install.md): a configuration that
# still uses the module (lbmethod=aoai, AOAI* directives, LogLevel
# aoai_balancer:...) fails once the module is gone, and then neither
# `apachectl graceful` nor `apachectl stop` can parse it.  So, on Debian,
# uninstall refuses while the module is enabled or while the configuration
# it leaves behind fails `apachectl configtest`.
uninstall:
ifneq ($(MODS_AVAILABLE),)
	@if [ -e "$(DESTDIR)$(SYSCONFDIR)/mods-enabled/aoai_balancer.load" ]; then \
	    echo "aoai_balancer is enabled: run a2dismod aoai_balancer first" >&2; exit 1; fi
	@if [ -f "$(DESTDIR)$(SYSCONFDIR)/apache2.conf" ] && command -v $(APACHECTL) >/dev/null \
	    && ! APACHE_CONFDIR="$(DESTDIR)$(SYSCONFDIR)" $(APACHECTL) configtest >/dev/null 2>&1; then \
	    APACHE_CONFDIR="$(DESTDIR)$(SYSCONFDIR)" $(APACHECTL) configtest 2>&1 | grep -v '^AH00558' >&2; \
	    echo "apachectl configtest fails without aoai_balancer: disable the configuration" \
	         "that uses it (a2disconf aoai-balancer), then apachectl graceful, then uninstall" >&2; \
	    exit 1; fi
	rm -f "$(DESTDIR)$(MODS_AVAILABLE)/aoai_balancer.load" \
	      "$(DESTDIR)$(MODS_AVAILABLE)/aoai_balancer.conf"
endif
	rm -f "$(DESTDIR)$(LIBEXECDIR)/mod_aoai_balancer.so" "$(DESTDIR)$(BINDIR)/aoai-keyhash"

clean:
	rm -rf .libs modules/.libs t/mock/.libs build *.la *.lo *.slo *.o \
	    modules/*.la modules/*.lo modules/*.slo modules/*.o t/mock/*.la t/mock/*.lo t/mock/*.slo t/mock/*.o
