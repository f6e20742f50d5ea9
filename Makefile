# clinic_migrate: move tenants from shared tables into a schema each, inside PostgreSQL.
EXTENSION = clinic_migrate
MODULE_big = clinic_migrate
OBJS = src/clinic_migrate.o src/state.o src/plan.o src/clone.o src/copy.o \
       src/capture.o src/apply.o src/sync.o src/worker.o src/cutover.o \
       src/validate.o src/rollback.o src/queue.o src/launcher.o
DATA = sql/clinic_migrate--0.1.sql sql/clinic_migrate--0.1--0.2.sql sql/clinic_migrate--0.2--0.3.sql
PGFILEDESC = "clinic_migrate - move tenants into their own schemas online"

# -Wno-unused-parameter: fmgr's PG_FUNCTION_ARGS and PostgreSQL's own headers
# trip it; everything else in -Wall -Wextra is an error.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
            -Wno-sign-compare -Wno-cast-function-type

REGRESS = setup plan clone migrate validate errors rollback edge cutover queue security upgrade upgrade_0_2
REGRESS_OPTS = --inputdir=. --temp-config=test/clinic_migrate.conf \
               --temp-instance=./tmp_check_regress

# races, with the worker held at pause points (test/specs, test/expected)
ISOLATION = capture_batch capture_open_xact cutover_write replay_unique tenant_transfer capture_snapshot
ISOLATION_OPTS = --inputdir=test --outputdir=output_iso --temp-config=test/clinic_migrate.conf \
                 --temp-instance=./tmp_check_iso

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track header dependencies: a changed struct must rebuild
# every object that uses it.
$(OBJS): $(wildcard src/*.h)
