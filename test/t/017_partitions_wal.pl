# test/t/017_partitions_wal.pl: the partitioned tables under load (011) with capture from the WAL (wal_level = logical,
# clinic_migrate.capture_method = wal) in place of the capture triggers.
use strict;
use warnings;

# loaded here, at compile time: their INIT blocks must run before the test's own
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

$ENV{CLINIC_CAPTURE_METHOD} = 'wal';
my $file = "$ENV{TESTDIR}/test/t/011_partitions_under_load.pl";
do $file or die($@ || "$file: $!");
