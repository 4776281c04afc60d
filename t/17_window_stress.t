# Issue 6, concurrency of shared state: modules/aoai_window.c raised from
# 4 processes x 4 threads at once (t/unit/window_stress.c): the later end
# always wins, and no read is torn.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use AOAIUnit;

run_unit_test(name => 'window_stress', cflags => ['-O2'],
              sources => ['modules/aoai_window.c'], libs => ['-lpthread']);
