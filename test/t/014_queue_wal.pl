# test/t/014_queue_wal.pl: the queue's crash test (004) with capture from the WAL (wal_level = logical,
# clinic_migrate.capture_method = wal) in place of the capture triggers.
use strict;
use warnings;

# loaded here, at compile time: their INIT blocks must run before the test's own
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

$ENV{CLINIC_CAPTURE_METHOD} = 'wal';
my $file = "$ENV{TESTDIR}/test/t/004_queue.pl";
do $file or die($@ || "$file: $!");
