"""
A twistd application file: ``twistd -ny tap/dnsgo.tac`` runs the server with
the configuration named by DNSGO_CONFIG (or the embedded default), for
deployments that prefer .tac files to the plugin.
"""
import os

from twisted.application import service

from dnsgo.config import load_config
from dnsgo.app.assemble import build_service

application = service.Application("dnsgo")
build_service(load_config(os.environ.get("DNSGO_CONFIG") or None)).setServiceParent(application)
