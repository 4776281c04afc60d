# Build mod_aoai_balancer with httpd's own apxs.
#
#   make -f apxs.mk              the module: .libs/mod_aoai_balancer.so
#   make -f apxs.mk sanitize     ASan+UBSan build: build/sanitize/.libs/mod_aoai_balancer.so
#   make -f apxs.mk mock         the mock Azure OpenAI member used by t/ and the demo
#   make -f apxs.mk test         build all three, then run t/ with prove
#   make -f apxs.mk install      into the system httpd (DESTDIR respected)

APXS     ?= apxs
WARNINGS  = -Wall -Wextra -Werror
SOURCES   = mod_aoai_balancer.c modules/aoai_lbmethod.c modules/aoai_throttle.c \
            modules/aoai_ratelimit_headers.c modules/aoai_failover.c
HEADERS   = modules/aoai_balancer.h
MOCK_SRC  = t/mock/mod_aoai_mock.c
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1

APXS_C    = $(APXS) -c $(foreach f,$(WARNINGS),-Wc,$(f)) -I. -Imodules

.PHONY: all sanitize mock test test-sanitize install clean

all: .libs/mod_aoai_balancer.so

.libs/mod_aoai_balancer.so: $(SOURCES) $(HEADERS) apxs.mk
	$(APXS_C) -o mod_aoai_balancer.la $(SOURCES)

# apxs puts objects beside their sources, so the sanitizer build gets a
# tree of its own instead of sharing (and clobbering) the release objects.
sanitize: build/sanitize/.libs/mod_aoai_balancer.so

build/sanitize/.libs/mod_aoai_balancer.so: $(SOURCES) $(HEADERS) apxs.mk
	mkdir -p build/sanitize/modules
	cp mod_aoai_balancer.c build/sanitize/
	cp modules/*.c modules/*.h build/sanitize/modules/
	cd build/sanitize && $(APXS) -c $(foreach f,$(WARNINGS) $(SAN_FLAGS),-Wc,$(f)) \
	    -Wl,-fsanitize=address,undefined -I. -Imodules \
	    -o mod_aoai_balancer.la $(SOURCES)

mock: t/mock/.libs/mod_aoai_mock.so

t/mock/.libs/mod_aoai_mock.so: $(MOCK_SRC) apxs.mk
	$(APXS) -c $(foreach f,$(WARNINGS),-Wc,$(f)) -o t/mock/mod_aoai_mock.la \
	    $(MOCK_SRC) -ljansson -lcrypto

test: all mock
	prove -v t/

test-sanitize: sanitize mock
	AOAI_SANITIZE=1 prove -v t/

install: all
	$(APXS) -i -S LIBEXECDIR="$(DESTDIR)$$($(APXS) -q LIBEXECDIR)" -n aoai_balancer mod_aoai_balancer.la

clean:
	rm -rf .libs modules/.libs t/mock/.libs build *.la *.lo *.slo *.o \
	    modules/*.la modules/*.lo modules/*.slo modules/*.o t/mock/*.la t/mock/*.lo t/mock/*.slo t/mock/*.o
