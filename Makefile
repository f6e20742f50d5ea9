# clinic_migrate: move tenants from shared tables into a schema each, inside PostgreSQL.
EXTENSION = clinic_migrate
MODULE_big = clinic_migrate
# The source tree in floors, one folder each, bottom to top (src/7_api/clinic_migrate.c
# says what each holds). OBJS lists the files bottom to top: a file calls and includes
# only files before it in this list, which test/layering.sh checks from the compiler's
# call graph.
FLOORS = src/1_base src/2_catalog src/3_tenant src/4_capture src/5_actions src/6_run src/7_api
OBJS = src/1_base/settings.o src/1_base/util.o src/1_base/runstate.o src/1_base/locks.o \
       src/1_base/state.o \
       src/2_catalog/plan.o \
       src/3_tenant/clone.o \
       src/4_capture/capture.o src/4_capture/apply.o src/4_capture/decode.o \
       src/5_actions/policies.o src/5_actions/ddl.o src/5_actions/sync.o src/5_actions/validate.o \
       src/5_actions/rollback.o src/5_actions/copy.o src/5_actions/cutover.o \
       src/6_run/jobs.o src/6_run/worker.o src/6_run/launcher.o \
       src/7_api/moves.o src/7_api/queue.o src/7_api/routing.o src/7_api/shared.o src/7_api/clinic_migrate.o
PG_CPPFLAGS = $(addprefix -I$(srcdir)/,$(FLOORS))
DATA = sql/clinic_migrate--0.1.sql sql/clinic_migrate--0.1--0.2.sql sql/clinic_migrate--0.2--0.3.sql sql/clinic_migrate--0.3--0.4.sql \
       sql/clinic_migrate--0.4--0.5.sql sql/clinic_migrate--0.5--0.6.sql sql/clinic_migrate--0.6--0.7.sql sql/clinic_migrate--0.7--0.8.sql sql/clinic_migrate--0.8--0.9.sql
PGFILEDESC = "clinic_migrate - move tenants into their own schemas online"

# -Wno-unused-parameter: fmgr's PG_FUNCTION_ARGS and PostgreSQL's own headers
# trip it; everything else in -Wall -Wextra is an error.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
            -Wno-sign-compare -Wno-cast-function-type

REGRESS = setup plan clone migrate validate errors rollback edge cutover queue security rls ddl ddl_tables partitions upgrade upgrade_0_2 upgrade_0_3 upgrade_0_4 upgrade_0_5 upgrade_0_6 upgrade_0_7 upgrade_0_8
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
$(OBJS): $(wildcard $(addsuffix /*.h,$(FLOORS)))
