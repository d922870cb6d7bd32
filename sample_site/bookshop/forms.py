from __future__ import annotations

from django import forms

from bookshop.models import Book, Review


class BookForm(forms.ModelForm):
    # The version the form was filled in from; see views.book_edit.
    version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = Book
        fields = ["title", "author", "isbn", "published", "pages", "price", "summary"]
        widgets = {
            "published": forms.DateInput(attrs={"type": "date"}),
            "summary": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not self.is_bound:
            self.fields["version"].initial = self.instance.version


class ReviewForm(forms.ModelForm):
    class Meta:
        model = Review
        fields = ["reviewer", "rating", "text"]
        widgets = {"text": forms.Textarea(attrs={"rows": 3})}
