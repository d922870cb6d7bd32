"""A project's own tests, written with no thought of replicas."""

import urllib.parse
import urllib.request

from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.test import LiveServerTestCase, TestCase, TransactionTestCase

from notes.models import Note


class NoteTests(TestCase):
    def test_a_saved_note_is_read_back_and_listed(self):
        Note.objects.create(text="first")
        self.assertEqual(list(Note.objects.values_list("text", flat=True)), ["first"])
        self.assertEqual(self.client.get("/notes/").content, b"first")

    def test_a_post_runs_its_own_queries_and_sets_no_cookie(self):
        with self.assertNumQueries(2):  # the INSERT and the list
            response = self.client.post("/notes/", {"text": "counted"})
        self.assertEqual(list(response.cookies), [])

    def test_a_posted_note_is_listed(self):
        response = self.client.post("/notes/", {"text": "posted"})
        self.assertEqual(response.content, b"posted")
        self.assertEqual(self.client.get("/notes/").content, b"posted")


class NoteTransactionTests(TransactionTestCase):
    def test_a_committed_note_is_read_back_and_listed(self):
        Note.objects.create(text="committed")
        self.assertEqual(Note.objects.get().text, "committed")
        self.assertEqual(self.client.get("/notes/").content, b"committed")


def _fetch(base: str, text: str | None = None) -> bytes:
    data = None if text is None else urllib.parse.urlencode({"text": text}).encode()
    with urllib.request.urlopen(f"{base}/notes/", data=data, timeout=10) as response:
        return response.read()


class NoteLiveServerTests(LiveServerTestCase):
    def test_the_server_lists_a_note_saved_by_the_test(self):
        Note.objects.create(text="live")
        self.assertEqual(_fetch(self.live_server_url), b"live")

    def test_a_note_posted_to_the_server_is_seen_by_the_test(self):
        self.assertEqual(_fetch(self.live_server_url, "from the browser"), b"from the browser")
        self.assertEqual(Note.objects.get().text, "from the browser")


class NoteStaticLiveServerTests(StaticLiveServerTestCase):
    def test_the_server_lists_a_note_saved_by_the_test(self):
        Note.objects.create(text="static live")
        self.assertEqual(_fetch(self.live_server_url), b"static live")
