"""Sites: a host's ``opsq_site`` routes it to that site's queue, which only the site's
workers consume. One job over two sites is one job; a site whose workers are down leaves
its hosts pending with the reason shown, and they end unreachable at the job's deadline;
the site's worker back, the next job runs everywhere and nothing ran twice."""

from __future__ import annotations

import yaml
from conftest import WORK, Worker
from helpers import wait_until
from jobtools import rows

from opsq import jobs
from opsq.app import fleet_queue
from opsq.worker import maintenance_tasks

SITES = {"alpha": ("host01", "host02", "host03"), "beta": ("host04", "host05", "host06")}


def _inventory(fleet) -> str:
    from devtools.devfleet import FLEET_USER

    by_name = {h.name: h for h in fleet.hosts}
    key = str(fleet.client_key_path)
    path = WORK / "sites.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {
        site: {"vars": {"opsq_site": site}, "hosts": {
            name: {"ansible_host": by_name[name].address, "ansible_port": by_name[name].port,
                   "ansible_user": FLEET_USER, "ansible_ssh_private_key_file": key}
            for name in names}}
        for site, names in SITES.items()}}}))
    return str(path)


def test_each_site_s_hosts_run_on_its_workers_and_wait_for_them(worker, fleet, opsq_cli):
    inventory = _inventory(fleet)
    site_workers = {site: Worker(f"site-{site}", queues=fleet_queue(site)) for site in SITES}
    try:
        # One job over both sites: each host ran on its site's worker, one summary.
        done = jobs.submit(jobs.JobSpec(command="hostname", pattern="all",
                                        inventory=inventory)).get(timeout=60)
        assert done["status"] == "succeeded" and done["total"] == 6
        ran = rows(done["job_id"])
        for site, names in SITES.items():
            assert {ran[n]["worker"].split("@")[0] for n in names} == {f"site-{site}"}, ran

        # beta's worker stops: alpha's hosts run, beta's wait, and say why.
        site_workers["beta"].stop()
        job_id = jobs.submit(jobs.JobSpec(command="echo hi", pattern="all",
                                          inventory=inventory, deadline=8)).id
        wait_until(lambda: all(rows(job_id)[n]["status"] == "ok" for n in SITES["alpha"]),
                   30, "site alpha's hosts")
        status = opsq_cli("status", job_id)
        assert "waiting for a worker of site beta (3 hosts)" in status.stdout, status.stdout
        assert all(rows(job_id)[n]["status"] == "pending" for n in SITES["beta"])
        # At the deadline the sweep ends them unreachable, naming the site; never hung.
        wait_until(lambda: (maintenance_tasks.sweep(), jobs.summary(job_id).finished)[1],
                   30, "the deadline to close the job")
        ended = jobs.summary(job_id)
        assert (ended.status.value, ended.counts) == ("failed", {"ok": 3, "unreachable": 3})
        assert all(rows(job_id)[n]["error"] == "not started by the job's deadline: no worker "
                   "of site beta took it" for n in SITES["beta"])
        assert "waiting for" not in opsq_cli("status", job_id).stdout

        # beta's worker back: the stranded tasks of the closed job run nothing, and the
        # next job runs on both sites.
        site_workers["beta"] = Worker("site-beta", queues=fleet_queue("beta"))
        again = jobs.submit(jobs.JobSpec(command="true", pattern="all",
                                         inventory=inventory)).get(timeout=60)
        assert again["status"] == "succeeded"
        assert all(rows(job_id)[n]["status"] == "unreachable" for n in SITES["beta"])
    finally:
        for w in site_workers.values():
            w.stop()


def test_a_site_name_that_cannot_be_a_queue_is_refused(fleet, tmp_path):
    from opsq.errors import InventoryError

    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"host01": {
        "ansible_host": fleet.hosts[0].address, "opsq_site": "EU West!"}}}}))
    try:
        jobs.plan(jobs.JobSpec(command="true", pattern="all", inventory=str(path)))
    except InventoryError as exc:
        assert "opsq_site must be" in str(exc) and "EU West!" in str(exc)
    else:
        raise AssertionError("a bad opsq_site was accepted")


def test_sites_in_networks_of_their_own_are_run_by_their_own_workers(worker, fleet):
    """Two sites, each in a network namespace whose hosts nothing outside can reach, each
    with its worker inside; one job over both; one site's worker stopped and started
    again."""
    import socket

    from netsites import NetSite

    from devtools.devfleet import FLEET_USER

    sites = {}
    workers = {}
    try:
        for index, name in enumerate(("north", "south"), start=1):
            sites[name] = NetSite(name, index, fleet)
        path = WORK / "netsites.yml"
        path.write_text(yaml.safe_dump({"all": {"children": {
            name: {"vars": {"opsq_site": name}, "hosts": {
                host: {"ansible_host": address, "ansible_port": port,
                       "ansible_user": FLEET_USER,
                       "ansible_ssh_private_key_file": str(fleet.client_key_path)}
                for host, address, port in site.hosts}}
            for name, site in sites.items()}}}))
        inventory = str(path)
        # From here (and so from the plain fleet's worker) a site's host is unreachable.
        _, address, port = sites["north"].hosts[0]
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((address, port)) != 0
        for name, site in sites.items():
            workers[name] = site.worker(name)
        done = jobs.submit(jobs.JobSpec(command="hostname -I", pattern="all",
                                        inventory=inventory)).get(timeout=90)
        assert done["status"] == "succeeded" and done["total"] == 4, done
        ran = rows(done["job_id"])
        for name, site in sites.items():
            for host, _, _ in site.hosts:
                assert ran[host]["worker"].startswith(f"net-{name}@"), ran[host]
                assert site.inside in ran[host]["stdout"], ran[host]  # its own network
        # south's worker stops: its hosts wait, and say why; back, they run.
        workers["south"].stop()
        job_id = jobs.submit(jobs.JobSpec(command="true", pattern="all",
                                          inventory=inventory)).id
        wait_until(lambda: jobs.waiting(job_id) == [
            "waiting for a worker of site south (2 hosts)"], 60, "south's hosts to wait")
        wait_until(lambda: jobs.summary(job_id).counts.get("ok") == 2, 60, "north's hosts")
        assert jobs.summary(job_id).counts == {"ok": 2, "pending": 2}
        workers["south"] = sites["south"].worker("south")
        wait_until(lambda: jobs.summary(job_id).finished, 60, "south's worker to run them")
        assert jobs.summary(job_id).counts == {"ok": 4}
    finally:
        for w in workers.values():
            w.stop()
        for site in sites.values():
            site.close()
